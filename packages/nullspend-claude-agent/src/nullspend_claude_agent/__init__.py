"""NullSpend for the Claude Agent SDK: with_nullspend() options."""
