"""NullSpend for LangChain: a callback handler that prices, attributes and caps every call."""
