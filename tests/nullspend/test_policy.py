"""The pure policy decisions: periods, velocity windows, budget admission."""

import datetime as dt

import pytest

from nullspend.policy.budgets import admits, remaining
from nullspend.policy.periods import needs_reset, next_period_start, period_start
from nullspend.policy.velocity import VelocityWindow, rate, retry_after, roll

T = dt.datetime(2026, 11, 22, 15, 30, tzinfo=dt.UTC)  # a Sunday


@pytest.mark.parametrize(
    ("interval", "start", "end"),
    [
        ("daily", dt.datetime(2026, 11, 22), dt.datetime(2026, 11, 23)),
        ("weekly", dt.datetime(2026, 11, 16), dt.datetime(2026, 11, 23)),
        ("monthly", dt.datetime(2026, 11, 1), dt.datetime(2026, 12, 1)),
        ("yearly", dt.datetime(2026, 1, 1), dt.datetime(2027, 1, 1)),
    ],
)
def test_periods_are_calendar_aligned_in_utc(
    interval: str, start: dt.datetime, end: dt.datetime
) -> None:
    assert period_start(interval, T) == start.replace(tzinfo=dt.UTC)
    assert next_period_start(interval, T) == end.replace(tzinfo=dt.UTC)
    # a time given in another zone is the same instant
    tokyo = T.astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert period_start(interval, tokyo) == start.replace(tzinfo=dt.UTC)


def test_december_rolls_into_next_year() -> None:
    december = dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC)
    assert next_period_start("monthly", december) == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)


def test_needs_reset() -> None:
    assert needs_reset("daily", T - dt.timedelta(days=1), T)
    assert not needs_reset("daily", period_start("daily", T), T)
    assert needs_reset("monthly", None, T)
    assert not needs_reset("none", None, T)
    assert period_start("none", T) is None
    with pytest.raises(ValueError, match="unknown reset interval"):
        period_start("hourly", T)


def test_velocity_two_bucket_approximation() -> None:
    window = VelocityWindow(T, current=600, previous=0, cooldown_until=None)
    roll(window, T + dt.timedelta(seconds=75), 60)  # into the next bucket
    assert (window.previous, window.current) == (600, 0)
    assert window.bucket_start == T + dt.timedelta(seconds=60)
    # 15 s into the bucket: 600 x (60 - 15) / 60 = 450 of the previous bucket still counts
    assert rate(window, T + dt.timedelta(seconds=75), 60) == 450
    window.current = 100
    assert rate(window, T + dt.timedelta(seconds=75), 60) == 550
    roll(window, T + dt.timedelta(seconds=500), 60)  # long idle: both buckets empty
    assert (window.previous, window.current) == (0, 0)


def test_velocity_rate_rounds_up() -> None:
    window = VelocityWindow(T, current=0, previous=1, cooldown_until=None)
    assert rate(window, T + dt.timedelta(seconds=59), 60) == 1  # 1/60 rounds up, never to 0


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert retry_after(T + dt.timedelta(seconds=29.2), T) == 30
    assert retry_after(T, T) == 1


@pytest.mark.parametrize(
    ("policy", "spend", "reserved", "estimate", "admitted"),
    [
        ("strict_block", 900, 0, 100, True),
        ("strict_block", 900, 0, 101, False),
        ("strict_block", 800, 100, 101, False),  # reservations count as spent
        ("soft_block", 999, 0, 10_000, True),  # under the limit: one call may overshoot
        ("soft_block", 1_000, 0, 1, False),
        ("warn", 5_000, 0, 1, True),
    ],
)
def test_admission(policy: str, spend: int, reserved: int, estimate: int, admitted: bool) -> None:
    assert admits(policy, 1_000, spend, reserved, estimate) is admitted


def test_remaining_never_negative() -> None:
    assert remaining(1_000, 1_200, 0) == 0
    assert remaining(1_000, 200, 300) == 500
