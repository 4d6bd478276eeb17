"""API keys: ``ns_live_sk_`` + 32 lowercase hex. Only the SHA-256 digest is stored."""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "ns_live_sk_"
KEY_PATTERN = re.compile(r"ns_live_sk_[0-9a-f]{32}")
DISPLAY_PREFIX_LENGTH = 19
ROLES = ("viewer", "member", "admin")


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_hex(16)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_PREFIX_LENGTH]


def role_allows(role: str, required: str) -> bool:
    """viewer reads; member also ingests and reserves; admin also manages."""
    return ROLES.index(role) >= ROLES.index(required)
