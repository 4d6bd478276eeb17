"""Prefixed identifiers: the prefix tells what an id names (``bgt_...`` is a budget)."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
