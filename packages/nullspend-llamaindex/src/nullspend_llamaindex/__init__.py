"""NullSpend for LlamaIndex: instrumentation that prices, attributes and caps every LLM call."""

from nullspend_llamaindex.instrument import Instrumentation, instrument

__all__ = ["Instrumentation", "instrument"]
