"""NullSpend for MCP: budget and approval tools, a gating MCP proxy."""
