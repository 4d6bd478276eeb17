"""Lazy period resets: a budget whose calendar period has ended starts the new one at zero spend
the moment a request or a status read touches it (no poller, so a reset is never late)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Protocol, TypeVar

from sqlalchemy import String, bindparam, or_
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend.policy.periods import needs_reset, period_start
from nullspend_server.db.database import Executor
from nullspend_server.db.tables import BUDGETS as _BUDGETS

_period_start = bindparam("start", type_=_BUDGETS.c.current_period_start.type)
# Only if the stored period is still the old one: concurrent resets of a budget are harmless.
_RESET = (
    _BUDGETS.update()
    .where(_BUDGETS.c.id == bindparam("budget_id", type_=String))
    .where(
        or_(
            _BUDGETS.c.current_period_start.is_(None),
            _BUDGETS.c.current_period_start < _period_start,
        )
    )
    .values(
        spend_microdollars=0,
        current_period_start=_period_start,
        updated_at=bindparam("now", type_=_BUDGETS.c.updated_at.type),
    )
)


class Periodic(Protocol):
    """A budget row (ORM or the engine's own) as far as resets are concerned."""

    id: str
    reset_interval: str
    current_period_start: dt.datetime | None
    spend_microdollars: int


B = TypeVar("B", bound=Periodic)


async def reset_due_periods(
    db: AsyncSession | Executor, budgets: Iterable[B], now: dt.datetime
) -> list[B]:
    """Start a new period for each budget that crossed a boundary; returns the budgets reset.

    Runs in the caller's transaction (on rows it has locked); the in-memory rows are updated to
    match. Reservations in flight stay reserved.
    """
    reset = []
    for budget in budgets:
        if not needs_reset(budget.reset_interval, budget.current_period_start, now):
            continue
        start = period_start(budget.reset_interval, now)
        await db.execute(_RESET, {"budget_id": budget.id, "start": start, "now": now})
        budget.spend_microdollars = 0
        budget.current_period_start = start
        reset.append(budget)
    return reset
