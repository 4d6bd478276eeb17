"""NullSpend for LlamaIndex: instrumentation that prices, attributes and caps every LLM call."""
