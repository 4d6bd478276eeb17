"""The HTTP API under /api: one module per resource."""
