"""Settle and release: the actual cost replaces the estimate, in the transaction that also
writes the cost event, so spend and the event log can never disagree."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend.attribution import TAG_ESTIMATED
from nullspend.errors import ErrorCode
from nullspend.usage import Usage
from nullspend_server.budget_periods import reset_due_periods
from nullspend_server.cost_events import record_cost_event
from nullspend_server.db.tables import Budget, CostEvent, Reservation, SessionSpend
from nullspend_server.engine.matching import lock_budgets_by_id
from nullspend_server.errors import ApiError
from nullspend_server.ids import new_id


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
    session: AsyncSession,
    org_id: str,
    reservation_id: str,
    settlement: Settlement,
    now: dt.datetime,
) -> CostEvent:
    reservation = await _lock_active(session, org_id, reservation_id)
    event = await _finish(session, reservation, settlement, "settled", now)
    await session.commit()
    assert event is not None
    return event


async def release(
    session: AsyncSession, org_id: str, reservation_id: str, now: dt.datetime
) -> None:
    """Give the estimate back: the call never happened (or cost nothing)."""
    reservation = await _lock_active(session, org_id, reservation_id)
    await _finish(session, reservation, None, "released", now)
    await session.commit()


async def settle_at_estimate(
    session: AsyncSession, reservation: Reservation, reason_tag: str, now: dt.datetime
) -> CostEvent | None:
    """For reservations nobody settled (expired, or their process died): spend the estimate,
    tagged so the event can be told apart from a measured one. The caller holds the row lock
    and commits."""
    settlement = Settlement(
        cost_microdollars=reservation.estimate_microdollars,
        system_tags={TAG_ESTIMATED: "true", reason_tag: "true"},
    )
    return await _finish(session, reservation, settlement, "expired", now)


async def _lock_active(session: AsyncSession, org_id: str, reservation_id: str) -> Reservation:
    query = select(Reservation).where(col(Reservation.id) == reservation_id).with_for_update()
    reservation = (await session.exec(query)).first()
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
    session: AsyncSession,
    reservation: Reservation,
    settlement: Settlement | None,
    status: str,
    now: dt.datetime,
) -> CostEvent | None:
    estimate = reservation.estimate_microdollars
    actual = settlement.cost_microdollars if settlement else 0
    budgets = await lock_budgets_by_id(session, reservation.budget_ids)
    await reset_due_periods(session, budgets, now)  # actual spend lands in the current period
    await session.execute(
        update(Budget)
        .where(col(Budget.id).in_([b.id for b in budgets]))
        .values(
            reserved_microdollars=col(Budget.reserved_microdollars) - estimate,
            spend_microdollars=col(Budget.spend_microdollars) + actual,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if reservation.session_id:
        await session.execute(
            update(SessionSpend)
            .where(
                col(SessionSpend.org_id) == reservation.org_id,
                col(SessionSpend.session_id) == reservation.session_id,
            )
            .values(
                reserved_microdollars=col(SessionSpend.reserved_microdollars) - estimate,
                spend_microdollars=col(SessionSpend.spend_microdollars) + actual,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
    reservation.status = status
    reservation.finished_at = now
    session.add(reservation)
    if settlement is None:
        return None
    return await record_cost_event(session, _event(reservation, settlement, now))


def _event(reservation: Reservation, settlement: Settlement, now: dt.datetime) -> CostEvent:
    usage = settlement.usage or Usage()
    return CostEvent(
        id=new_id("ce"),
        org_id=reservation.org_id,
        api_key_id=reservation.api_key_id,
        source=reservation.source,
        provider=settlement.provider or reservation.provider or "unknown",
        model=settlement.model or reservation.model or "unknown",
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cached_input_tokens=usage.cache_read_tokens,
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        audio_input_tokens=usage.audio_input_tokens,
        audio_output_tokens=usage.audio_output_tokens,
        web_search_requests=usage.web_search_requests,
        cost_microdollars=settlement.cost_microdollars,
        duration_ms=settlement.duration_ms,
        session_id=reservation.session_id,
        trace_id=settlement.trace_id or reservation.trace_id,
        customer=reservation.customer,
        event_type=settlement.event_type,
        upstream_status=settlement.upstream_status,
        reservation_id=reservation.id,
        tags={**reservation.tags, **settlement.system_tags},
        created_at=now,
    )
