"""Cost events: ingest (single, idempotent; batches of up to 100, all or nothing), list with a
cursor and filters, and CSV export streamed straight from the database."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field, model_validator
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend import pricing
from nullspend.attribution import (
    MAX_ACTION_ID,
    MAX_EVENT_TYPE,
    MAX_PROVIDER,
    MAX_SERVICE_TIER,
    MAX_TRACE_ID,
)
from nullspend.client.models import MAX_BATCH
from nullspend.errors import ErrorCode, UnpricedModelError
from nullspend.limits import MAX_CALL_MICRODOLLARS, MAX_EVENTS_PAGE, PRICED_ABOVE_A_CALL
from nullspend.usage import Usage
from nullspend_server.api.event_queries import (
    EventFilters,
    EventQuery,
    decode_cursor,
    encode_cursor,
)
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
    TokenCount,
)
from nullspend_server.auth import Member, Principal, Session, Viewer, WriteSession
from nullspend_server.cost_events import event_columns, record_cost_events
from nullspend_server.db.database import Database
from nullspend_server.db.tables import CostEvent, utcnow
from nullspend_server.engine.reported import count_reported
from nullspend_server.errors import ApiError
from nullspend_server.ids import new_id

router = APIRouter(tags=["cost events"])
EXPORT_BATCH = 1_000


class CostEventIn(RequestModel):
    """One call's cost. Token counts follow ``nullspend.usage.Usage``: inputTokens is uncached
    input (cachedInputTokens are the cache reads, counted apart); reasoningTokens are part of
    outputTokens. Without costMicrodollars the server prices the usage with its catalog."""

    provider: str = Field(min_length=1, max_length=MAX_PROVIDER)
    model: ModelName
    input_tokens: TokenCount = 0
    output_tokens: TokenCount = 0
    cached_input_tokens: TokenCount = 0
    cache_write_5m_tokens: TokenCount = Field(default=0, alias="cacheWrite5mTokens")
    cache_write_1h_tokens: TokenCount = Field(default=0, alias="cacheWrite1hTokens")
    reasoning_tokens: TokenCount = 0
    audio_input_tokens: TokenCount = 0
    audio_output_tokens: TokenCount = 0
    web_search_requests: TokenCount = 0
    service_tier: str | None = Field(default=None, max_length=MAX_SERVICE_TIER)
    """The processing tier that served the call (OpenAI's ``service_tier``): priced at its
    rates. Not kept: the cost is."""
    cost_microdollars: CallMicrodollars | None = None
    duration_ms: DurationMs | None = None
    session_id: SessionId | None = None
    trace_id: str | None = Field(default=None, max_length=MAX_TRACE_ID)
    customer: CustomerId | None = None
    event_type: str | None = Field(default=None, max_length=MAX_EVENT_TYPE)
    action_id: str | None = Field(default=None, max_length=MAX_ACTION_ID)
    tags: Tags = Field(default_factory=dict)

    @model_validator(mode="after")
    def _reasoning_within_output(self) -> CostEventIn:
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError("reasoningTokens are part of outputTokens and cannot exceed them")
        return self

    def usage(self) -> Usage:
        return Usage.of_event(self)

    def cost(self) -> int:
        if self.cost_microdollars is not None:
            return self.cost_microdollars
        try:
            priced = pricing.cost(self.usage(), self.model, service_tier=self.service_tier)
        except UnpricedModelError:
            raise ValueError(
                f"model {self.model!r} is not in the pricing catalog: send costMicrodollars"
            ) from None
        if priced.total_microdollars > MAX_CALL_MICRODOLLARS:
            raise ValueError(PRICED_ABOVE_A_CALL)
        return priced.total_microdollars


class Batch(RequestModel):
    events: list[CostEventIn] = Field(min_length=1, max_length=MAX_BATCH)


class Ingested(ApiModel):
    id: str
    created_at: dt.datetime
    cost_microdollars: int


class BatchIngested(ApiModel):
    inserted: int
    ids: list[str]


class CostEventOut(ApiModel):
    id: str
    created_at: dt.datetime
    source: str
    provider: str
    model: str
    api_key_id: str | None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_5m_tokens: int = Field(serialization_alias="cacheWrite5mTokens")
    cache_write_1h_tokens: int = Field(serialization_alias="cacheWrite1hTokens")
    reasoning_tokens: int
    audio_input_tokens: int
    audio_output_tokens: int
    web_search_requests: int
    cost_microdollars: int
    duration_ms: int | None
    session_id: str | None
    trace_id: str | None
    customer: str | None
    event_type: str | None
    upstream_status: int | None
    reservation_id: str | None
    action_id: str | None
    tags: dict[str, str]


class EventPage(ApiModel):
    data: list[CostEventOut]
    cursor: str | None


def _event(
    principal: Principal,
    body: CostEventIn,
    cost: int,
    now: dt.datetime,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> CostEvent:
    return CostEvent(
        id=new_id("ce"),
        org_id=principal.org_id,
        api_key_id=principal.key_id,
        source="api",
        **body.model_dump(exclude={"cost_microdollars", "service_tier", "tags"}),
        cost_microdollars=cost,
        tags={**principal.default_tags, **body.tags},
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
    )


async def _record(session: AsyncSession, principal: Principal, events: list[CostEvent]) -> None:
    """Record reported calls and count them against their budgets, all or none."""
    db = await session.connection()
    await record_cost_events(db, [event_columns(e) for e in events])
    await count_reported(db, principal.org_id, principal.key_id, events, events[0].created_at)
    await session.commit()


def _invalid(message: str, details: dict[str, Any] | None = None) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, message, details)


async def _replay(
    session: AsyncSession, principal: Principal, key: str, request_hash: str
) -> CostEvent | None:
    """The event recorded earlier under ``key``, if any. Read in the request's own session:
    a second connection per request, taken while holding the first, would empty the pool
    when many arrive together (each holding one, all waiting)."""
    query = select(CostEvent).where(
        col(CostEvent.org_id) == principal.org_id, col(CostEvent.idempotency_key) == key
    )
    event = (await session.exec(query)).first()
    if event is not None and event.request_hash != request_hash:
        raise ApiError(
            ErrorCode.CONFLICT,
            "this Idempotency-Key was used with another body",
            {"idempotencyKey": key, "id": event.id},
        )
    return event


@router.post("/api/cost-events", status_code=201)
async def ingest(
    body: CostEventIn,
    principal: Member,
    session: WriteSession,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> Data[Ingested]:
    request_hash = None
    if idempotency_key is not None:
        request_hash = _hash(body)
        if (
            earlier := await _replay(session, principal, idempotency_key, request_hash)
        ) is not None:
            response.status_code = 200
            return Data(data=Ingested.model_validate(earlier))
    try:
        cost = body.cost()
    except ValueError as error:
        raise _invalid(str(error), {"model": body.model}) from None
    event = _event(principal, body, cost, utcnow(), idempotency_key, request_hash)
    try:
        await _record(session, principal, [event])
    except IntegrityError:  # the same key raced in from a concurrent retry
        await session.rollback()
        assert idempotency_key is not None
        assert request_hash is not None
        earlier = await _replay(session, principal, idempotency_key, request_hash)
        assert earlier is not None
        response.status_code = 200
        return Data(data=Ingested.model_validate(earlier))
    return Data(data=Ingested.model_validate(event))


@router.post("/api/cost-events/batch", status_code=201)
async def ingest_batch(
    body: Batch,
    principal: Member,
    session: WriteSession,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=240)] = None,
) -> BatchIngested:
    """All or none. With an Idempotency-Key, a batch sent again (a retry after a lost answer)
    is recorded once: its events carry the key and their index."""
    if idempotency_key is not None and "#" in idempotency_key:
        # Its events are stored as <key>#<index>: a '#' in the key could match another's.
        raise _invalid("a batch's Idempotency-Key cannot contain '#'", {"idempotencyKey": None})
    request_hash = _hash(body) if idempotency_key is not None else None
    if idempotency_key is not None and request_hash is not None:
        earlier = await _replay_batch(session, principal, idempotency_key, request_hash)
        if earlier is not None:
            response.status_code = 200
            return earlier
    costs, errors = [], []
    for index, event in enumerate(body.events):
        try:
            costs.append(event.cost())
        except ValueError as error:
            errors.append({"index": index, "message": str(error)})
    if errors:
        raise _invalid("the batch was not ingested: some events are invalid", {"errors": errors})
    now = utcnow()
    events = [
        _event(
            principal,
            e,
            c,
            now,
            f"{idempotency_key}#{i}" if idempotency_key is not None else None,
            request_hash,
        )
        for i, (e, c) in enumerate(zip(body.events, costs, strict=True))
    ]
    try:
        await _record(session, principal, events)
    except IntegrityError:  # the same key raced in from a concurrent retry
        await session.rollback()
        assert idempotency_key is not None
        assert request_hash is not None
        earlier = await _replay_batch(session, principal, idempotency_key, request_hash)
        assert earlier is not None
        response.status_code = 200
        return earlier
    return BatchIngested(inserted=len(events), ids=[e.id for e in events])


# Event fields added since events were first hashed: left out of the hash while unset, so an
# event recorded before an upgrade and retried after it still matches the body it repeats.
_ADDED_SINCE = ("service_tier",)


def _hash(body: CostEventIn | Batch) -> str:
    dumped = body.model_dump(mode="json")
    for event in dumped["events"] if isinstance(body, Batch) else [dumped]:
        for name in _ADDED_SINCE:
            if event[name] is None:
                del event[name]
    return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()


async def _replay_batch(
    session: AsyncSession, principal: Principal, key: str, request_hash: str
) -> BatchIngested | None:
    """The batch recorded earlier under ``key``, if any (read as ``_replay`` reads)."""
    query = select(CostEvent).where(
        col(CostEvent.org_id) == principal.org_id,
        col(CostEvent.idempotency_key).startswith(f"{key}#", autoescape=True),
    )
    found = list(await session.exec(query))
    if not found:
        return None
    if any(event.request_hash != request_hash for event in found):
        raise ApiError(
            ErrorCode.CONFLICT,
            "this Idempotency-Key was used with another batch",
            {"idempotencyKey": key},
        )
    found.sort(key=lambda event: int(str(event.idempotency_key).rsplit("#", 1)[1]))
    return BatchIngested(inserted=len(found), ids=[event.id for event in found])


Filters = Annotated[EventQuery, Depends()]


def _page_query(filters: EventFilters, after: int | None, limit: int) -> Any:
    query = filters.apply(select(CostEvent)).order_by(col(CostEvent.seq).desc()).limit(limit)
    if after is not None:
        query = query.where(col(CostEvent.seq) < after)
    return query


@router.get("/api/cost-events")
async def list_events(
    principal: Viewer,
    session: Session,
    query: Filters,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS_PAGE)] = 50,
    cursor: str | None = None,
) -> EventPage:
    """Newest first. The cursor is a position in insertion order, so events ingested while
    paging appear on the first page, never in the middle: no skips, no repeats."""
    filters = query.filters(principal.org_id)
    after = decode_cursor(cursor) if cursor else None
    rows = list((await session.exec(_page_query(filters, after, limit + 1))).all())
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].seq) if len(rows) > limit else None
    return EventPage(data=[CostEventOut.model_validate(r) for r in page], cursor=next_cursor)


# The export's columns are the API's own field names.
CSV_COLUMNS = [
    field.serialization_alias or field.alias or name
    for name, field in CostEventOut.model_fields.items()
]


@router.get("/api/cost-events/export.csv", response_class=StreamingResponse)
async def export_events(principal: Viewer, query: Filters, request: Request) -> StreamingResponse:
    filters = query.filters(principal.org_id)
    db: Database = request.app.state.db

    async def lines() -> AsyncIterator[str]:
        yield _csv_line(CSV_COLUMNS)
        after = None
        while True:  # keyset batches: memory stays flat however many events match
            async with db.sessions() as session:
                rows = list((await session.exec(_page_query(filters, after, EXPORT_BATCH))).all())
            for row in rows:
                out = CostEventOut.model_validate(row).model_dump(by_alias=True)
                out["tags"] = json.dumps(out["tags"], sort_keys=True)
                yield _csv_line([out[name] for name in CSV_COLUMNS])
            if len(rows) < EXPORT_BATCH:
                return
            after = rows[-1].seq

    return StreamingResponse(
        lines(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="cost-events.csv"'},
    )


def _csv_line(values: list[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow(["" if v is None else v for v in values])
    return buffer.getvalue()
