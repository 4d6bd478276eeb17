"""Lazy period resets: a budget whose calendar period has ended starts the new one at zero spend
the moment a request or a status read touches it (no poller, so a reset is never late)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from sqlalchemy import or_, update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend.policy.periods import needs_reset, period_start
from nullspend_server.db.tables import Budget


async def reset_due_periods(
    session: AsyncSession, budgets: Iterable[Budget], now: dt.datetime
) -> list[Budget]:
    """Start a new period for each budget that crossed a boundary; returns the budgets reset.

    Each reset is one conditional UPDATE (only if the stored period is still the old one), so
    concurrent resets of the same budget are harmless. Reservations in flight stay reserved.
    Runs in the caller's transaction; the in-memory rows are updated to match.
    """
    reset = []
    for budget in budgets:
        if not needs_reset(budget.reset_interval, budget.current_period_start, now):
            continue
        start = period_start(budget.reset_interval, now)
        await session.execute(
            update(Budget)
            .where(col(Budget.id) == budget.id)
            .where(
                or_(
                    col(Budget.current_period_start).is_(None),
                    col(Budget.current_period_start) < start,
                )
            )
            .values(spend_microdollars=0, current_period_start=start, updated_at=now)
        )
        budget.spend_microdollars = 0
        budget.current_period_start = start
        reset.append(budget)
    return reset
