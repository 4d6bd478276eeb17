"""Reserve: admit a request's estimate against every budget it is subject to, or deny it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import BigInteger, String, bindparam, or_, select

from nullspend.attribution import tags_with_customer
from nullspend.policy import denials
from nullspend.policy.budgets import admits
from nullspend.policy.denials import Denial
from nullspend.policy.velocity import VelocityWindow, rate, retry_after, roll
from nullspend_server.auth import Principal
from nullspend_server.budget_periods import reset_due_periods
from nullspend_server.db.database import Executor
from nullspend_server.db.tables import BUDGETS, RESERVATIONS
from nullspend_server.engine.matching import BudgetState, lock_budgets
from nullspend_server.engine.sessions import change_session_spend, lock_session_spend
from nullspend_server.ids import new_id

# Which denial a request hears first when several budgets refuse it: its own key's, then the
# organization's, then its customer's, then its tags'.
_ENTITY_ORDER = {"api_key": 0, "user": 1, "customer": 2, "tag": 3}
_INSERT_RESERVATION = RESERVATIONS.insert()
# What a request sent again under its reservation id must repeat to be answered the reservation
# it made: whose it is, how much it holds, and what it is counted against.
_SAME_REQUEST = (
    "api_key_id",
    "estimate_microdollars",
    "provider",
    "model",
    "customer",
    "session_id",
    "trace_id",
    "tags",
)
_EARLIER = select(
    RESERVATIONS.c.org_id,
    RESERVATIONS.c.status,
    RESERVATIONS.c.expires_at,
    *(RESERVATIONS.c[name] for name in _SAME_REQUEST),
).where(RESERVATIONS.c.id == bindparam("id", type_=String))
# Adds the estimate to a budget's reserved amount and stores its velocity window. The database
# refuses it if it would overdraw a strict budget: a guard, the locked checks already decided.
_estimate = bindparam("estimate", type_=BigInteger)
_RESERVE_BUDGET = (
    BUDGETS.update()
    .where(BUDGETS.c.id == bindparam("budget_id", type_=String))
    .where(
        or_(
            BUDGETS.c.policy != "strict_block",
            _estimate == 0,
            # Compared as what is left, which cannot overflow a BIGINT as the sum could.
            _estimate
            <= BUDGETS.c.limit_microdollars
            - BUDGETS.c.spend_microdollars
            - BUDGETS.c.reserved_microdollars,
        )
    )
    .values(
        reserved_microdollars=BUDGETS.c.reserved_microdollars + _estimate,
        **{
            column: bindparam(f"new_{column}", type_=BUDGETS.c[column].type)
            for column in (
                "velocity_window_start",
                "velocity_current_microdollars",
                "velocity_previous_microdollars",
                "velocity_cooldown_until",
            )
        },
    )
)


@dataclass(frozen=True, slots=True)
class Tightest:
    """The budget with the least left after a reservation: the proxy reports it in headers."""

    entity: str
    limit_microdollars: int
    spent_microdollars: int
    remaining_microdollars: int


class DeniedError(Exception):
    def __init__(self, denial: Denial) -> None:
        super().__init__(denial.message)
        self.denial = denial


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    estimate_microdollars: int
    source: str = "api"
    provider: str | None = None
    model: str | None = None
    customer: str | None = None
    session_id: str | None = None
    trace_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    reservation_id: str | None = None
    """The caller's id for it: a request sent again with it answers the reservation made."""


class ReservationIdTakenError(Exception):
    """The caller's reservation id names another organization's, or a finished, reservation,
    or one made for another request."""


def effective_tags(principal: Principal, request: ReservationRequest) -> dict[str, str]:
    """The key's default tags under the request's own; the customer is tag ``customer``."""
    return tags_with_customer({**principal.default_tags, **request.tags}, request.customer)


@dataclass(frozen=True, slots=True)
class Admission:
    reservation_id: str
    expires_at: dt.datetime
    tightest: Tightest | None
    replayed: bool = False
    """The request was sent before and this reservation made then (its answer was lost)."""


async def reserve(
    db: Executor,
    principal: Principal,
    request: ReservationRequest,
    *,
    now: dt.datetime,
    expires_at: dt.datetime,
    instance_id: str,
) -> Admission | Denial:
    """Reserve ``request``'s estimate, or say why not, in the caller's transaction.

    The matching budget rows are locked first, so every check below reads values no other
    transaction can change before this one commits. A denial also leaves state to commit
    (period resets, a tripped velocity cooldown).
    """
    estimate = request.estimate_microdollars
    tags = effective_tags(principal, request)
    reservation_id = request.reservation_id or new_id("rsv")
    made: dict[str, Any] = {
        "id": reservation_id,
        "org_id": principal.org_id,
        "api_key_id": principal.key_id,
        "status": "active",
        "estimate_microdollars": estimate,
        "source": request.source,
        "provider": request.provider,
        "model": request.model,
        "customer": request.customer,
        "session_id": request.session_id,
        "trace_id": request.trace_id,
        "tags": tags,
        "instance_id": instance_id,
        "created_at": now,
        "expires_at": expires_at,
        "finished_at": None,
    }
    if request.reservation_id is not None:
        earlier = (await db.execute(_EARLIER, {"id": request.reservation_id})).first()
        if earlier is not None:
            # Another request under the id (another key, estimate, customer ...) was never
            # checked against its budgets: answered the reservation, it would go uncapped.
            if (
                earlier.org_id != principal.org_id
                or earlier.status != "active"
                or any(getattr(earlier, name) != made[name] for name in _SAME_REQUEST)
            ):
                raise ReservationIdTakenError(request.reservation_id)
            return Admission(request.reservation_id, earlier.expires_at, None, replayed=True)
    budgets = await lock_budgets(db, principal.org_id, principal.key_id, request.customer, tags)
    await reset_due_periods(db, budgets, now)

    # A session's spend counts every call made in it, whichever budgets the call falls under:
    # settling one moves its estimate out of the session's reserved amount in every case.
    if request.session_id:
        spend, reserved = await lock_session_spend(db, principal.org_id, request.session_id, now)
        limits = [b.session_limit_microdollars for b in budgets if b.session_limit_microdollars]
        if limits and spend + reserved + estimate > min(limits):
            return denials.session_limit_exceeded(request.session_id, spend, min(limits))

    denial = _first_denial(budgets, estimate, now)
    if denial is not None:
        for budget in budgets:
            if budget.velocity_limit_microdollars:
                await _save_reservation(db, budget, 0)  # keep the rolled window, or a cooldown
        return denial

    for budget in budgets:
        if budget.velocity_limit_microdollars:
            budget.velocity_current_microdollars += estimate  # counted at the estimate
        await _save_reservation(db, budget, estimate)
    if request.session_id:
        await change_session_spend(
            db, principal.org_id, request.session_id, reserved=estimate, actual=0, now=now
        )
    await db.execute(_INSERT_RESERVATION, {**made, "budget_ids": [b.id for b in budgets]})
    return Admission(reservation_id, expires_at, _tightest(budgets, estimate))


def _first_denial(budgets: list[BudgetState], estimate: int, now: dt.datetime) -> Denial | None:
    """Velocity first (checking a window rolls it, and may trip its cooldown), then the
    budgets in the order their denials are heard."""
    for budget in budgets:
        if denial := _check_velocity(budget, estimate, now):
            return denial
    for budget in sorted(budgets, key=lambda b: (_ENTITY_ORDER[b.entity_type], b.id)):
        if not admits(
            budget.policy,
            budget.limit_microdollars,
            budget.spend_microdollars,
            budget.reserved_microdollars,
            estimate,
        ):
            return _budget_denial(budget, estimate)
    return None


def _tightest(budgets: list[BudgetState], estimate: int) -> Tightest | None:
    if not budgets:
        return None
    left = {
        b.id: b.limit_microdollars - b.spend_microdollars - b.reserved_microdollars - estimate
        for b in budgets
    }
    budget = min(budgets, key=lambda b: left[b.id])
    return Tightest(
        f"{budget.entity_type}:{budget.entity_id}",
        budget.limit_microdollars,
        budget.spend_microdollars,
        max(left[budget.id], 0),
    )


def _check_velocity(budget: BudgetState, estimate: int, now: dt.datetime) -> Denial | None:
    """Roll the budget's velocity window to now and deny if it is cooling down or the estimate
    would take it over its limit (which trips the cooldown). Charging happens only once every
    check has passed, so a denial elsewhere leaves this window as it was."""
    limit = budget.velocity_limit_microdollars
    if not limit:
        return None
    seconds = budget.velocity_window_seconds
    window = VelocityWindow(
        budget.velocity_window_start,
        budget.velocity_current_microdollars,
        budget.velocity_previous_microdollars,
        budget.velocity_cooldown_until,
    )
    roll(window, now, seconds)
    current = rate(window, now, seconds)
    denial = None
    if window.cooldown_until is not None and window.cooldown_until > now:
        wait = retry_after(window.cooldown_until, now)
        denial = denials.velocity_exceeded(
            budget.entity_type, budget.entity_id, limit, seconds, current, wait
        )
    elif current + estimate > limit:
        window.cooldown_until = now + dt.timedelta(seconds=budget.velocity_cooldown_seconds)
        denial = denials.velocity_exceeded(
            budget.entity_type,
            budget.entity_id,
            limit,
            seconds,
            current,
            budget.velocity_cooldown_seconds,
        )
    budget.velocity_window_start = window.bucket_start
    budget.velocity_current_microdollars = window.current
    budget.velocity_previous_microdollars = window.previous
    budget.velocity_cooldown_until = window.cooldown_until
    return denial


def _budget_denial(budget: BudgetState, estimate: int) -> Denial:
    limit, spend = budget.limit_microdollars, budget.spend_microdollars
    if budget.entity_type == "customer":
        return denials.customer_budget_exceeded(budget.entity_id, limit, spend, budget.upgrade_url)
    if budget.entity_type == "tag":
        key, _, value = budget.entity_id.partition("=")
        return denials.tag_budget_exceeded(key, value, limit, spend)
    return denials.budget_exceeded(
        budget.entity_type, budget.entity_id, limit, spend, estimate, budget.upgrade_url
    )


async def _save_reservation(db: Executor, budget: BudgetState, estimate: int) -> None:
    result = await db.execute(
        _RESERVE_BUDGET,
        {
            "budget_id": budget.id,
            "estimate": estimate,
            "new_velocity_window_start": budget.velocity_window_start,
            "new_velocity_current_microdollars": budget.velocity_current_microdollars,
            "new_velocity_previous_microdollars": budget.velocity_previous_microdollars,
            "new_velocity_cooldown_until": budget.velocity_cooldown_until,
        },
    )
    if result.rowcount != 1:
        raise RuntimeError(f"budget {budget.id} changed while locked")


__all__ = ["Admission", "DeniedError", "ReservationRequest", "effective_tags", "reserve"]
