"""Reserve: admit a request's estimate against every budget it is subject to, or deny it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import or_, update
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend.policy import denials
from nullspend.policy.budgets import admits
from nullspend.policy.denials import Denial
from nullspend.policy.velocity import VelocityWindow, rate, retry_after, roll
from nullspend_server.auth import Principal
from nullspend_server.budget_periods import reset_due_periods
from nullspend_server.db.tables import Budget, Reservation
from nullspend_server.engine.matching import lock_budgets
from nullspend_server.engine.sessions import lock_session_spend
from nullspend_server.ids import new_id

# Which denial a request hears first when several budgets refuse it: its own key's, then the
# organization's, then its customer's, then its tags'.
_ENTITY_ORDER = {"api_key": 0, "user": 1, "customer": 2, "tag": 3}


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


def effective_tags(principal: Principal, request: ReservationRequest) -> dict[str, str]:
    """The key's default tags under the request's own; the customer is tag ``customer``."""
    tags = {**principal.default_tags, **request.tags}
    if request.customer:
        tags.setdefault("customer", request.customer)
    return tags


async def reserve(
    session: AsyncSession,
    principal: Principal,
    request: ReservationRequest,
    *,
    now: dt.datetime,
    expires_at: dt.datetime,
    instance_id: str,
) -> tuple[Reservation, Tightest | None]:
    """Reserve ``request``'s estimate in one transaction, or raise DeniedError.

    The matching budget rows are locked first, so every check below reads values no other
    transaction can change before this one commits. State that must survive a denial (period
    resets, a tripped velocity cooldown) is committed before DeniedError is raised.
    """
    estimate = request.estimate_microdollars
    tags = effective_tags(principal, request)
    budgets = await lock_budgets(
        session, principal.org_id, principal.key_id, request.customer, tags
    )
    await reset_due_periods(session, budgets, now)

    spend_row = None
    session_limits = [b.session_limit_microdollars for b in budgets if b.session_limit_microdollars]
    if request.session_id and session_limits:
        spend_row = await lock_session_spend(session, principal.org_id, request.session_id, now)
        limit = min(session_limits)
        if spend_row.spend_microdollars + spend_row.reserved_microdollars + estimate > limit:
            await _deny(
                session,
                denials.session_limit_exceeded(
                    request.session_id, spend_row.spend_microdollars, limit
                ),
            )

    for budget in budgets:
        if denial := _check_velocity(budget, estimate, now):
            await _deny(session, denial)

    for budget in sorted(budgets, key=lambda b: (_ENTITY_ORDER[b.entity_type], b.id)):
        if not admits(
            budget.policy,
            budget.limit_microdollars,
            budget.spend_microdollars,
            budget.reserved_microdollars,
            estimate,
        ):
            await _deny(session, _budget_denial(budget, estimate))

    for budget in budgets:
        if budget.velocity_limit_microdollars:
            budget.velocity_current_microdollars += estimate  # counted at the estimate
    await session.flush()  # velocity buckets and resets, before the guarded increments
    for budget in budgets:
        await _add_reserved(session, budget.id, estimate)
    if spend_row is not None:
        spend_row.reserved_microdollars += estimate
        spend_row.updated_at = now
    reservation = Reservation(
        id=new_id("rsv"),
        org_id=principal.org_id,
        api_key_id=principal.key_id,
        status="active",
        estimate_microdollars=estimate,
        budget_ids=[b.id for b in budgets],
        source=request.source,
        provider=request.provider,
        model=request.model,
        customer=request.customer,
        session_id=request.session_id,
        trace_id=request.trace_id,
        tags=tags,
        instance_id=instance_id,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(reservation)
    await session.commit()
    return reservation, _tightest(budgets, estimate)


def _tightest(budgets: list[Budget], estimate: int) -> Tightest | None:
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


def _check_velocity(budget: Budget, estimate: int, now: dt.datetime) -> Denial | None:
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


def _budget_denial(budget: Budget, estimate: int) -> Denial:
    limit, spend = budget.limit_microdollars, budget.spend_microdollars
    if budget.entity_type == "customer":
        return denials.customer_budget_exceeded(budget.entity_id, limit, spend, budget.upgrade_url)
    if budget.entity_type == "tag":
        key, _, value = budget.entity_id.partition("=")
        return denials.tag_budget_exceeded(key, value, limit, spend)
    return denials.budget_exceeded(
        budget.entity_type, budget.entity_id, limit, spend, estimate, budget.upgrade_url
    )


async def _add_reserved(session: AsyncSession, budget_id: str, estimate: int) -> None:
    """The reservation itself: one conditional update, refused by the database if a strict
    budget would be overdrawn (a guard: the locked checks above already decided)."""
    result = await session.execute(
        update(Budget)
        .where(col(Budget.id) == budget_id)
        .where(
            or_(
                col(Budget.policy) != "strict_block",
                col(Budget.spend_microdollars) + col(Budget.reserved_microdollars) + estimate
                <= col(Budget.limit_microdollars),
            )
        )
        .values(reserved_microdollars=col(Budget.reserved_microdollars) + estimate)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise RuntimeError(f"budget {budget_id} changed while locked")


async def _deny(session: AsyncSession, denial: Denial) -> None:
    await session.commit()  # keep resets and cooldown trips; nothing was reserved
    raise DeniedError(denial)


__all__ = ["DeniedError", "ReservationRequest", "effective_tags", "reserve"]
