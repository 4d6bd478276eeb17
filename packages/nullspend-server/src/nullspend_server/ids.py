"""Prefixed identifiers: the prefix tells what an id names (``bgt_...`` is a budget)."""

from __future__ import annotations

import secrets

CLIENT_RESERVATION_ID = r"^rsv_[A-Za-z0-9_-]{16,36}$"
"""A reservation id of its client's making: a reserve sent again under it answers the
reservation it made."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"
