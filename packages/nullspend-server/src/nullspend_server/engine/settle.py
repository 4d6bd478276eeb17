"""Settle and release: the actual cost replaces the estimate, in the transaction that also
writes the cost event, so spend and the event log can never disagree. And extend: a call still
going keeps its reservation from expiring."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import String, bindparam, select

from nullspend.attribution import TAG_ESTIMATED, TAG_EXPIRED
from nullspend.errors import ErrorCode
from nullspend.pricing import recorded_provider
from nullspend.usage import Usage
from nullspend_server.budget_periods import reset_due_periods
from nullspend_server.cost_events import record_cost_events
from nullspend_server.db.database import Executor
from nullspend_server.db.tables import RESERVATIONS
from nullspend_server.engine.matching import SETTLE_BUDGETS, lock_budgets_by_id
from nullspend_server.engine.sessions import change_session_spend
from nullspend_server.errors import ApiError
from nullspend_server.ids import CLIENT_RESERVATION_ID, new_id

_reservation_id = RESERVATIONS.c.id == bindparam("reservation_id", type_=String)
_LOCK = select(RESERVATIONS).where(_reservation_id).with_for_update()
_FINISH = (
    RESERVATIONS.update()
    .where(_reservation_id)
    .values(
        status=bindparam("new_status", type_=String),
        finished_at=bindparam("now", type_=RESERVATIONS.c.finished_at.type),
    )
)

_INSERT_RELEASED = RESERVATIONS.insert()
_EXTEND = (
    RESERVATIONS.update()
    .where(_reservation_id)
    .values(expires_at=bindparam("expires_at", type_=RESERVATIONS.c.expires_at.type))
)


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a finished call actually cost, and what to record about it."""

    cost_microdollars: int
    provider: str | None = None
    model: str | None = None
    usage: Usage | None = None
    duration_ms: int | None = None
    upstream_status: int | None = None
    event_type: str | None = None
    trace_id: str | None = None
    system_tags: Mapping[str, str] = field(default_factory=dict)
    """``_ns_*`` tags NullSpend adds (estimated, cancelled, unpriced ...)."""


async def settle(
    db: Executor,
    org_id: str,
    reservation_id: str,
    settlement: Settlement,
    now: dt.datetime,
) -> str:
    """Settle at the actual cost; returns the id of the cost event written."""
    reservation = await _lock_active(db, org_id, reservation_id)
    event_id = await _finish(db, reservation, settlement, "settled", now)
    assert event_id is not None
    return event_id


async def release(
    db: Executor, org_id: str, reservation_id: str, now: dt.datetime, key_id: str | None = None
) -> None:
    """Give the estimate back: the call never happened (or cost nothing). Given its client's
    key (a release over the API), an id of the client's making that names no reservation yet
    is kept as released: the client gave up on a reserve whose answer did not come, and that
    reserve may still land, late, which must then be refused rather than held unused until it
    expires and is charged its estimate."""
    reservation = await _lock(db, reservation_id)
    if reservation is None and key_id and re.match(CLIENT_RESERVATION_ID, reservation_id):
        await db.execute(_INSERT_RELEASED, _released(org_id, key_id, reservation_id, now))
        return
    await _finish(db, active(reservation, org_id, reservation_id), None, "released", now)


async def extend(db: Executor, org_id: str, reservation_id: str, expires_at: dt.datetime) -> None:
    """Push an active reservation's expiry back to ``expires_at``: its call is still going (a
    stream longer than the TTL). One past its expiry that the sweep has not yet settled is
    extended too, as a settle would still be taken."""
    await _lock_active(db, org_id, reservation_id)
    await db.execute(_EXTEND, {"reservation_id": reservation_id, "expires_at": expires_at})


async def settle_abandoned(
    db: Executor, reservation_id: str, reason_tag: str, now: dt.datetime
) -> bool:
    """For a reservation nobody settled (expired, or its process died): spend the estimate,
    tagged so the event can be told apart from a measured one. False if it was settled
    meanwhile, by its owner or another recovering process, or (expired) extended meanwhile:
    its call goes on."""
    reservation = await _lock(db, reservation_id)
    if reservation is None or reservation.status != "active":
        return False
    if reason_tag == TAG_EXPIRED and reservation.expires_at >= now:
        return False
    settlement = Settlement(
        cost_microdollars=reservation.estimate_microdollars,
        system_tags={TAG_ESTIMATED: "true", reason_tag: "true"},
    )
    await _finish(db, reservation, settlement, "expired", now)
    return True


async def _lock(db: Executor, reservation_id: str) -> Any:
    return (await db.execute(_LOCK, {"reservation_id": reservation_id})).first()


async def _lock_active(db: Executor, org_id: str, reservation_id: str) -> Any:
    return active(await _lock(db, reservation_id), org_id, reservation_id)


def _released(org_id: str, key_id: str, reservation_id: str, now: dt.datetime) -> dict[str, Any]:
    """A reservation that never held anything, finished as released."""
    return {
        "id": reservation_id,
        "org_id": org_id,
        "api_key_id": key_id,
        "status": "released",
        "estimate_microdollars": 0,
        "budget_ids": [],
        "source": "api",
        "tags": {},
        "instance_id": "",
        "created_at": now,
        "expires_at": now,
        "finished_at": now,
    }


def active(reservation: Any, org_id: str, reservation_id: str) -> Any:
    """``reservation`` (a row with its ``org_id`` and ``status``), if it is the organization's
    and still active: else 404 not_found, or 409 conflict once it is finished."""
    if reservation is None or reservation.org_id != org_id:
        raise ApiError(ErrorCode.NOT_FOUND, f"no reservation {reservation_id!r}")
    if reservation.status != "active":
        raise ApiError(
            ErrorCode.CONFLICT,
            f"reservation {reservation_id} is already {reservation.status}",
            {"reservationId": reservation_id, "status": reservation.status},
        )
    return reservation


async def _finish(
    db: Executor,
    reservation: Any,
    settlement: Settlement | None,
    status: str,
    now: dt.datetime,
) -> str | None:
    estimate = reservation.estimate_microdollars
    actual = settlement.cost_microdollars if settlement else 0
    budgets = await lock_budgets_by_id(db, reservation.budget_ids)
    await reset_due_periods(db, budgets, now)  # actual spend lands in the current period
    change = {"estimate": estimate, "actual": actual, "now": now}
    if budgets:
        await db.execute(SETTLE_BUDGETS, {**change, "ids": [b.id for b in budgets]})
    if reservation.session_id:
        await change_session_spend(
            db,
            reservation.org_id,
            reservation.session_id,
            reserved=-estimate,
            actual=actual,
            now=now,
        )
    await db.execute(_FINISH, {"reservation_id": reservation.id, "new_status": status, "now": now})
    if settlement is None:
        return None
    event = _event(reservation, settlement, now)
    await record_cost_events(db, [event])
    return str(event["id"])


def _event(reservation: Any, settlement: Settlement, now: dt.datetime) -> dict[str, Any]:
    usage = settlement.usage or Usage()
    return {
        "id": new_id("ce"),
        "org_id": reservation.org_id,
        "api_key_id": reservation.api_key_id,
        "source": reservation.source,
        "provider": recorded_provider(
            settlement.provider or reservation.provider, settlement.model or reservation.model
        ),
        "model": settlement.model or reservation.model or "unknown",
        **usage.event_columns(),
        "cost_microdollars": settlement.cost_microdollars,
        "duration_ms": settlement.duration_ms,
        "session_id": reservation.session_id,
        "trace_id": settlement.trace_id or reservation.trace_id,
        "customer": reservation.customer,
        "event_type": settlement.event_type,
        "upstream_status": settlement.upstream_status,
        "reservation_id": reservation.id,
        "action_id": None,
        "idempotency_key": None,
        "request_hash": None,
        "tags": {**reservation.tags, **settlement.system_tags},
        "created_at": now,
    }
