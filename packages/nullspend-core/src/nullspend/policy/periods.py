"""Budget periods: calendar-aligned in UTC, reset lazily when a request or a read crosses one."""

from __future__ import annotations

import datetime as dt
from typing import Literal

ResetInterval = Literal["daily", "weekly", "monthly", "yearly", "none"]
RESET_INTERVALS: tuple[ResetInterval, ...] = ("daily", "weekly", "monthly", "yearly", "none")


def period_start(interval: str, now: dt.datetime) -> dt.datetime | None:
    """The start of the period containing ``now`` (weeks start on Monday); None for ``none``."""
    now = now.astimezone(dt.UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "daily":
        return midnight
    if interval == "weekly":
        return midnight - dt.timedelta(days=midnight.weekday())
    if interval == "monthly":
        return midnight.replace(day=1)
    if interval == "yearly":
        return midnight.replace(month=1, day=1)
    if interval == "none":
        return None
    raise ValueError(
        f"unknown reset interval {interval!r}; use one of {', '.join(RESET_INTERVALS)}"
    )


def next_period_start(interval: str, now: dt.datetime) -> dt.datetime | None:
    """When the period containing ``now`` ends."""
    start = period_start(interval, now)
    if start is None:
        return None
    if interval == "daily":
        return start + dt.timedelta(days=1)
    if interval == "weekly":
        return start + dt.timedelta(weeks=1)
    if interval == "monthly":
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.replace(year=start.year + 1)


def needs_reset(interval: str, current_start: dt.datetime | None, now: dt.datetime) -> bool:
    """Whether a budget whose period began at ``current_start`` has crossed into a new one."""
    start = period_start(interval, now)
    return start is not None and (current_start is None or current_start < start)
