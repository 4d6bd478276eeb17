"""NullSpend core: exact pricing of LLM calls, usage normalisation and budget policy."""
