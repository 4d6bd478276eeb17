"""Denials: why a request may not spend, with the wire body every surface sends for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nullspend.errors import ErrorCode


@dataclass(frozen=True, slots=True)
class Denial:
    code: ErrorCode
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    retry_after_seconds: int | None = None
    upgrade_url: str | None = None


def budget_exceeded(
    entity_type: str, entity_id: str, limit: int, spend: int, estimate: int, upgrade_url: str | None
) -> Denial:
    return Denial(
        ErrorCode.BUDGET_EXCEEDED,
        f"{entity_type} budget {entity_id} would be exceeded: limit {limit} microdollars, "
        f"spent {spend}, this request is estimated at {estimate}",
        {
            "entity_type": entity_type,
            "entity_id": entity_id,
            "budget_limit_microdollars": limit,
            "budget_spend_microdollars": spend,
            "estimated_cost_microdollars": estimate,
        },
        upgrade_url=upgrade_url,
    )


def customer_budget_exceeded(
    customer_id: str, limit: int, spend: int, upgrade_url: str | None
) -> Denial:
    return Denial(
        ErrorCode.CUSTOMER_BUDGET_EXCEEDED,
        f"customer {customer_id} budget would be exceeded: limit {limit} microdollars, "
        f"spent {spend}",
        {
            "customer_id": customer_id,
            "budget_limit_microdollars": limit,
            "budget_spend_microdollars": spend,
        },
        upgrade_url=upgrade_url.replace("{customer_id}", customer_id) if upgrade_url else None,
    )


def tag_budget_exceeded(tag_key: str, tag_value: str, limit: int, spend: int) -> Denial:
    return Denial(
        ErrorCode.TAG_BUDGET_EXCEEDED,
        f"tag budget {tag_key}={tag_value} would be exceeded: limit {limit} microdollars, "
        f"spent {spend}",
        {
            "tag_key": tag_key,
            "tag_value": tag_value,
            "budget_limit_microdollars": limit,
            "budget_spend_microdollars": spend,
        },
    )


def velocity_exceeded(
    entity_type: str,
    entity_id: str,
    limit: int,
    window_seconds: int,
    current: int,
    retry_after_seconds: int,
) -> Denial:
    return Denial(
        ErrorCode.VELOCITY_EXCEEDED,
        f"spend velocity of {entity_type} {entity_id} is over {limit} microdollars per "
        f"{window_seconds} s; retry in {retry_after_seconds} s",
        {
            "entity_type": entity_type,
            "entity_id": entity_id,
            "velocity_limit_microdollars": limit,
            "window_seconds": window_seconds,
            "current_spend_microdollars": current,
        },
        retry_after_seconds=retry_after_seconds,
    )


def session_limit_exceeded(session_id: str, spend: int, limit: int) -> Denial:
    return Denial(
        ErrorCode.SESSION_LIMIT_EXCEEDED,
        f"session {session_id} would exceed its limit of {limit} microdollars (spent {spend})",
        {
            "session_id": session_id,
            "session_spend_microdollars": spend,
            "session_limit_microdollars": limit,
        },
    )
