"""The proxy: OpenAI- and Anthropic-compatible routes that price, attribute and cap every call."""
