"""NullSpend for LangChain: a callback handler that prices, attributes and caps every call."""

from nullspend_langchain.handler import CUSTOMER_KEY, SESSION_KEY, NullSpendCallbackHandler

__all__ = ["CUSTOMER_KEY", "SESSION_KEY", "NullSpendCallbackHandler"]
