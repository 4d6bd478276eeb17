"""Budgets as stored: their defaults, whose they may be, and reads that see the current period."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from nullspend.errors import ErrorCode
from nullspend.policy.periods import needs_reset, period_start
from nullspend.policy.velocity import DEFAULT_COOLDOWN_SECONDS, DEFAULT_WINDOW_SECONDS
from nullspend_server.budget_periods import reset_due_periods
from nullspend_server.db.database import Database, end_read
from nullspend_server.db.tables import ApiKey, Budget, utcnow
from nullspend_server.errors import ApiError
from nullspend_server.ids import new_id

DEFAULT_POLICY = "strict_block"
DEFAULT_RESET_INTERVAL = "monthly"
DEFAULT_THRESHOLDS = (50, 80, 90, 95)


def new_budget(
    org_id: str, entity_type: str, entity_id: str, settings: Mapping[str, Any], now: dt.datetime
) -> Budget:
    """A budget with the defaults for every setting ``settings`` (column name -> value) omits."""
    budget = Budget(
        id=new_id("bgt"),
        org_id=org_id,
        entity_type=entity_type,
        entity_id=entity_id,
        policy=DEFAULT_POLICY,
        reset_interval=DEFAULT_RESET_INTERVAL,
        threshold_percentages=list(DEFAULT_THRESHOLDS),
        velocity_window_seconds=DEFAULT_WINDOW_SECONDS,
        velocity_cooldown_seconds=DEFAULT_COOLDOWN_SECONDS,
        created_at=now,
        updated_at=now,
    )
    change(budget, settings, now)
    budget.current_period_start = period_start(budget.reset_interval, now)
    return budget


def change(budget: Budget, settings: Mapping[str, Any], now: dt.datetime) -> None:
    """Set ``settings`` (column name -> value). A new reset interval starts its current period
    now; the spend so far counts in it (a change of schedule never forgets spend)."""
    for name, value in settings.items():
        setattr(budget, name, value)
    if "reset_interval" in settings:
        budget.current_period_start = period_start(budget.reset_interval, now)
    budget.updated_at = now


async def check_entity(
    session: AsyncSession, org_id: str, entity_type: str, entity_id: str | None
) -> str:
    """The entity id a new budget of this organization is for, or a 400 if it cannot be.

    The request body's schema has already checked the form of customer and tag ids; what is
    left needs the caller's organization or the database.
    """
    if entity_type == "user":
        if entity_id not in (None, org_id):
            raise _invalid("a user budget is the organization's: entityId is its id or omitted")
        return org_id
    assert entity_id is not None  # the schema requires it for every other entity type
    if entity_type == "api_key":
        key = await session.get(ApiKey, entity_id)
        if key is None or key.org_id != org_id:
            raise _invalid(f"no API key {entity_id!r} in this organization")
    return entity_id


def _invalid(message: str) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, message, {"field": "entityId"})


def of_org(org_id: str) -> SelectOfScalar[Budget]:
    """An organization's budgets in id order (the order enforcement locks them in)."""
    return select(Budget).where(col(Budget.org_id) == org_id).order_by(col(Budget.id))


def one_of_org(org_id: str, budget_id: str) -> SelectOfScalar[Budget]:
    if not budget_id.isprintable():
        budget_id = ""  # PostgreSQL refuses to compare text with NUL in it; no id has any
    return of_org(org_id).where(col(Budget.id) == budget_id)


def not_found(budget_id: str) -> ApiError:
    return ApiError(ErrorCode.NOT_FOUND, f"no budget {budget_id!r}")


async def current(
    db: Database, session: AsyncSession, query: SelectOfScalar[Budget]
) -> list[Budget]:
    """The budgets ``query`` selects, each in its current period.

    A read must not show last period's spend, so a budget whose period has ended starts the new
    one here. That needs a writing transaction, which only the read that crosses a boundary
    opens; the rows are locked there as enforcement locks them, so that the reset never
    overwrites spend that a concurrent settle adds to the new period.
    """
    budgets = list(await session.exec(query))
    now = utcnow()
    if not any(needs_reset(b.reset_interval, b.current_period_start, now) for b in budgets):
        return budgets
    await end_read(session)
    async with db.write_session() as writer:
        # Locked until the commit (in id order, as enforcement locks them): the reset rows are
        # written back then, and a settle landing in between would otherwise be overwritten.
        budgets = list(await writer.exec(query.with_for_update()))
        await reset_due_periods(writer, budgets, now)
        await writer.commit()
    return budgets
