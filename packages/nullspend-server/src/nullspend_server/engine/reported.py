"""Reported calls: a call made without a reservation (``POST /api/cost-events``) counts against
the budgets and the session it falls under, as a settled one does. It is never refused: the call
has happened."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Sequence

from nullspend.attribution import tags_with_customer
from nullspend_server.budget_periods import reset_due_periods
from nullspend_server.db.database import Executor
from nullspend_server.db.tables import CostEvent
from nullspend_server.engine.matching import (
    SETTLE_BUDGETS,
    lock_budgets,
    lock_budgets_of_calls,
)
from nullspend_server.engine.sessions import change_session_spend, lock_session_spend


async def count_reported(
    db: Executor, org_id: str, api_key_id: str, events: Sequence[CostEvent], now: dt.datetime
) -> None:
    """Add ``events``' costs to the spend of their budgets and sessions, in the transaction that
    records them."""
    # The calls' costs by what they fall under: a batch is mostly of a few customers and tags.
    cost_of: Counter[tuple[str | None, tuple[tuple[str, str], ...]]] = Counter()
    for event in events:
        tags = tags_with_customer(event.tags, event.customer)
        cost_of[event.customer, tuple(sorted(tags.items()))] += event.cost_microdollars
    calls = [(customer, dict(tags)) for customer, tags in cost_of]
    # All their budgets locked by one statement, in one id order; then each call's, held already.
    budgets = await lock_budgets_of_calls(db, org_id, api_key_id, calls)
    await reset_due_periods(db, budgets, now)  # the spend lands in the current period
    spent: Counter[str] = Counter()
    for (customer, tags), cost in zip(calls, cost_of.values(), strict=True):
        for budget in await lock_budgets(db, org_id, api_key_id, customer, tags):
            spent[budget.id] += cost
    for budget_id, actual in spent.items():
        await db.execute(
            SETTLE_BUDGETS, {"ids": [budget_id], "estimate": 0, "actual": actual, "now": now}
        )
    by_session: Counter[str] = Counter()
    for event in events:
        if event.session_id:
            by_session[event.session_id] += event.cost_microdollars
    for session_id in sorted(by_session):  # one lock order, whatever the batch
        await lock_session_spend(db, org_id, session_id, now)
        await change_session_spend(
            db, org_id, session_id, reserved=0, actual=by_session[session_id], now=now
        )
