"""NullSpend reference server: OpenAI/Anthropic-compatible proxy, budgets, cost events."""
