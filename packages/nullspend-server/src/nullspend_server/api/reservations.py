"""Reservations: the enforcement engine over HTTP, so an SDK enforces exactly like the proxy."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from pydantic import Field, model_validator
from sqlmodel import col, select

from nullspend import pricing
from nullspend.attribution import (
    MAX_EVENT_TYPE,
    MAX_PROVIDER,
    MAX_SERVICE_TIER,
    MAX_TRACE_ID,
    model_error,
)
from nullspend.errors import ErrorCode, UnpricedModelError
from nullspend.limits import MAX_CALL_MICRODOLLARS, PRICED_ABOVE_A_CALL
from nullspend.usage import Usage
from nullspend.wire import FORMATS
from nullspend_server.api.schema import (
    ApiModel,
    CallMicrodollars,
    CustomerId,
    Data,
    DurationMs,
    ModelName,
    RequestModel,
    SessionId,
    Tags,
    UsageIn,
)
from nullspend_server.auth import Member, Session, presented_key
from nullspend_server.db.database import end_read
from nullspend_server.db.tables import Reservation
from nullspend_server.engine import (
    DeniedError,
    Engine,
    ReservationIdTakenError,
    ReservationRequest,
    Settlement,
)
from nullspend_server.engine.settle import active
from nullspend_server.errors import ApiError, denial_error, estimate_above_a_call
from nullspend_server.ids import CLIENT_RESERVATION_ID

router = APIRouter(tags=["reservations"])

FormatName = Literal[
    "openai.chat", "openai.responses", "anthropic.messages", "gemini.generate_content"
]


class ReservationCreate(RequestModel):
    estimate_microdollars: CallMicrodollars | None = None
    """A known estimate; otherwise give ``model`` and the provider ``request`` to estimate."""
    model: ModelName | None = None
    provider: str | None = Field(default=None, max_length=MAX_PROVIDER)
    format: FormatName | None = None
    """The request's wire format; inferred from its shape when omitted."""
    request: dict[str, Any] | None = None
    customer: CustomerId | None = None
    session_id: SessionId | None = None
    trace_id: str | None = Field(default=None, max_length=MAX_TRACE_ID)
    tags: Tags = Field(default_factory=dict)
    reservation_id: str | None = Field(default=None, pattern=CLIENT_RESERVATION_ID)
    """The caller's id for it: sent again, the request answers the reservation it made."""

    @model_validator(mode="after")
    def _something_to_estimate(self) -> ReservationCreate:
        if self.estimate_microdollars is None and self.request is None:
            raise ValueError("give estimateMicrodollars, or model and the provider request")
        named = (self.request or {}).get("model")
        if self.model is None and named is not None and (error := model_error(named)):
            raise ValueError(f"request.{error}")  # kept as the reservation's model
        return self


class Reserved(ApiModel):
    reservation_id: str
    estimate_microdollars: int
    expires_at: dt.datetime
    unpriced: bool = False


class Extended(ApiModel):
    reservation_id: str
    expires_at: dt.datetime


class SettleBody(RequestModel):
    cost_microdollars: CallMicrodollars | None = None
    usage: UsageIn | None = None
    service_tier: str | None = Field(default=None, max_length=MAX_SERVICE_TIER)
    model: ModelName | None = None
    provider: str | None = Field(default=None, max_length=MAX_PROVIDER)
    duration_ms: DurationMs | None = None
    event_type: str | None = Field(default=None, max_length=MAX_EVENT_TYPE)
    trace_id: str | None = Field(default=None, max_length=MAX_TRACE_ID)

    @model_validator(mode="after")
    def _something_to_settle(self) -> SettleBody:
        if self.cost_microdollars is None and self.usage is None:
            raise ValueError("give costMicrodollars, or usage (priced with the catalog)")
        return self


class Settled(ApiModel):
    reservation_id: str
    status: str
    cost_event_id: str | None = None
    cost_microdollars: int | None = None


def _estimate(body: ReservationCreate) -> tuple[int, bool]:
    """The estimate to reserve, and whether the model was unpriced."""
    if body.estimate_microdollars is not None:
        return body.estimate_microdollars, False
    assert body.request is not None
    estimate = pricing.estimate_request_body(
        body.request,
        FORMATS[body.format] if body.format else None,
        provider=body.provider,
        model=body.model,
    )
    if estimate.requested_model is None:
        raise ApiError(ErrorCode.VALIDATION_ERROR, "the request names no model; give model")
    if estimate.microdollars > MAX_CALL_MICRODOLLARS:
        raise estimate_above_a_call()
    return estimate.microdollars, estimate.unpriced


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


@router.post("/api/reservations", status_code=201)
async def create(
    body: ReservationCreate, principal: Member, request: Request, response: Response
) -> Data[Reserved]:
    request.app.state.rate_limiter.enforce(presented_key(request.headers) or "")
    estimate, unpriced = _estimate(body)
    try:
        admission = await _engine(request).reserve(
            principal,
            ReservationRequest(
                estimate_microdollars=estimate,
                provider=body.provider,
                model=body.model or (body.request or {}).get("model"),
                customer=body.customer,
                session_id=body.session_id,
                trace_id=body.trace_id,
                tags=body.tags,
                reservation_id=body.reservation_id,
            ),
        )
    except DeniedError as denied:
        raise denial_error(denied.denial) from None
    except ReservationIdTakenError:
        raise ApiError(
            ErrorCode.CONFLICT,
            "this reservationId names another reservation (another organization's, or one"
            " made for a different request), or one already finished",
            {"reservationId": body.reservation_id},
        ) from None
    if admission.replayed:
        response.status_code = 200
    return Data(
        data=Reserved(
            reservation_id=admission.reservation_id,
            estimate_microdollars=estimate,
            expires_at=admission.expires_at,
            unpriced=unpriced,
        )
    )


async def _usage_cost(
    session: Session, org_id: str, reservation_id: str, body: SettleBody, usage: Usage
) -> int:
    """Price reported usage with the catalog (the model from the body, else the reservation)."""
    model = body.model
    if model is None:
        query = select(Reservation.org_id, Reservation.status, Reservation.model).where(
            col(Reservation.id) == reservation_id
        )
        reservation = (await session.exec(query)).first()
        await end_read(session)  # the settle's write transaction comes next
        # One that is missing or finished is answered so (404, 409), not as a model unpriced.
        model = active(reservation, org_id, reservation_id).model
    try:
        cost = pricing.cost(usage, model or "", service_tier=body.service_tier).total_microdollars
    except UnpricedModelError:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            f"model {model!r} is not in the pricing catalog: send costMicrodollars",
            {"model": model},
        ) from None
    if cost > MAX_CALL_MICRODOLLARS:
        raise ApiError(ErrorCode.VALIDATION_ERROR, PRICED_ABOVE_A_CALL, {"cost": cost})
    return cost


@router.post("/api/reservations/{reservation_id}/settle")
async def settle_reservation(
    reservation_id: str, body: SettleBody, principal: Member, session: Session, request: Request
) -> Data[Settled]:
    usage = None
    if body.usage is not None:
        try:
            usage = Usage(**body.usage.model_dump())
        except ValueError as error:
            raise ApiError(ErrorCode.VALIDATION_ERROR, str(error)) from None
    cost = body.cost_microdollars
    if cost is None:
        assert usage is not None
        cost = await _usage_cost(session, principal.org_id, reservation_id, body, usage)
    event_id = await _engine(request).settle(
        principal.org_id,
        reservation_id,
        Settlement(
            cost_microdollars=cost,
            provider=body.provider,
            model=body.model,
            usage=usage,
            duration_ms=body.duration_ms,
            event_type=body.event_type,
            trace_id=body.trace_id,
        ),
    )
    return Data(
        data=Settled(
            reservation_id=reservation_id,
            status="settled",
            cost_event_id=event_id,
            cost_microdollars=cost,
        )
    )


@router.post("/api/reservations/{reservation_id}/extend")
async def extend_reservation(
    reservation_id: str, principal: Member, request: Request
) -> Data[Extended]:
    """A call still going (a stream longer than the TTL) keeps its reservation: a full TTL
    again from now. The SDK's clients send it while a call's chunks arrive."""
    expires_at = await _engine(request).extend(principal.org_id, reservation_id)
    return Data(data=Extended(reservation_id=reservation_id, expires_at=expires_at))


@router.delete("/api/reservations/{reservation_id}")
async def release_reservation(
    reservation_id: str, principal: Member, request: Request
) -> Data[Settled]:
    await _engine(request).release(principal.org_id, reservation_id, key_id=principal.key_id)
    return Data(data=Settled(reservation_id=reservation_id, status="released"))
