"""Spend velocity: spend over a sliding window, approximated with two fixed buckets.

The rate at time t is ``previous * (window - elapsed) / window + current``, where ``elapsed`` is
how far t is into the current bucket. Spend is counted at its estimate when it is reserved.
Going over the limit trips a cooldown during which every request is denied.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

MIN_WINDOW_SECONDS = 10
MAX_WINDOW_SECONDS = 3600
DEFAULT_WINDOW_SECONDS = 60
DEFAULT_COOLDOWN_SECONDS = 60


@dataclass(slots=True)
class VelocityWindow:
    bucket_start: dt.datetime | None
    current: int
    previous: int
    cooldown_until: dt.datetime | None


def roll(window: VelocityWindow, now: dt.datetime, seconds: int) -> None:
    """Advance the buckets to the one containing ``now``."""
    length = dt.timedelta(seconds=seconds)
    if window.bucket_start is None or now >= window.bucket_start + 2 * length:
        window.previous = 0
        window.current = 0
        window.bucket_start = now
    elif now >= window.bucket_start + length:
        window.previous = window.current
        window.current = 0
        window.bucket_start += length


def rate(window: VelocityWindow, now: dt.datetime, seconds: int) -> int:
    """Spend in the sliding window ending now, rounded up (integers only)."""
    if window.bucket_start is None:
        return window.current
    elapsed_us = (now - window.bucket_start) // dt.timedelta(microseconds=1)
    window_us = seconds * 1_000_000
    remaining = max(window_us - elapsed_us, 0)
    return -(-window.previous * remaining // window_us) + window.current


def retry_after(until: dt.datetime, now: dt.datetime) -> int:
    """Whole seconds until ``until`` (at least 1), for a Retry-After header."""
    return max(1, math.ceil((until - now).total_seconds()))
