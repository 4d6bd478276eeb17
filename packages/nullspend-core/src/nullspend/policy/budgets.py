"""Budget checks: whether a budget admits a request's estimate under its policy."""

from __future__ import annotations

from typing import Literal

Policy = Literal["strict_block", "soft_block", "warn"]
POLICIES: tuple[Policy, ...] = ("strict_block", "soft_block", "warn")
ENTITY_TYPES = ("user", "api_key", "customer", "tag")


def admits(policy: str, limit: int, spend: int, reserved: int, estimate: int) -> bool:
    """strict_block: the estimate must fit in what is left (limit - spend - reserved).
    soft_block: admitted until spend and reservations reach the limit (one call may overshoot).
    warn: always admitted (the caller warns and alerts)."""
    if policy == "strict_block":
        return estimate <= limit - spend - reserved
    if policy == "soft_block":
        return spend + reserved < limit
    if policy == "warn":
        return True
    raise ValueError(f"unknown budget policy {policy!r}")  # never admit by default


def remaining(limit: int, spend: int, reserved: int) -> int:
    return max(limit - spend - reserved, 0)
