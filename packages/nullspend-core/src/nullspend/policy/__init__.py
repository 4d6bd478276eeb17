"""Budget policy: the pure decisions every surface enforces the same way (no storage here)."""
