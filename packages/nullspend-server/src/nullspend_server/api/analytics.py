"""Where the money went: totals over a period, and attribution by tag, key, customer, model or
provider (with a daily series per group), as JSON or streamed CSV."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import ColumnElement, desc, func, select
from sqlmodel import col

from nullspend.attribution import tag_errors
from nullspend_server.api.cost_events import Filters, _csv_line
from nullspend_server.api.event_queries import EventFilters, invalid, utc_day
from nullspend_server.api.schema import ApiModel
from nullspend_server.auth import Session, Viewer
from nullspend_server.db.database import end_read
from nullspend_server.db.tables import CostEvent, CostEventTag

router = APIRouter(tags=["analytics"])

COLUMN_GROUPS = {
    "api_key": CostEvent.api_key_id,
    "customer": CostEvent.customer,
    "model": CostEvent.model,
    "provider": CostEvent.provider,
}
# A total is summed in two parts, whole thousands of dollars and the rest, added up here: past
# 9,223 calls at one call's most (10^15 µ$), a sum overflows a BIGINT, which SQLite's sum()
# refuses ("integer overflow": every summary of the period answered 503). Both parts divide as
# integers on both databases, and order as the total does.
_SPLIT = 10**9
_COST = CostEvent.cost_microdollars
TOTAL = (
    func.coalesce(func.sum(_COST // _SPLIT), 0).label("total_high"),
    func.coalesce(func.sum(_COST % _SPLIT), 0).label("total_low"),
)
BY_TOTAL: tuple[Any, ...] = (desc("total_high"), desc("total_low"))
COUNT = func.count()


def total_of(row: Any) -> int:
    return int(row.total_high) * _SPLIT + int(row.total_low)


class Group(ApiModel):
    key: str | None
    total_cost_microdollars: int
    request_count: int


class Day(ApiModel):
    date: str
    cost_microdollars: int
    request_count: int


class Summary(ApiModel):
    start: dt.datetime | None
    end: dt.datetime | None
    total_cost_microdollars: int
    request_count: int
    by_day: list[Day]
    by_model: list[Group]
    by_provider: list[Group]
    by_api_key: list[Group]


class SummaryResponse(ApiModel):
    data: Summary


class Attribution(ApiModel):
    group_by: str
    start: dt.datetime | None
    end: dt.datetime | None
    data: list[Group]


class GroupDetail(ApiModel):
    group_by: str
    key: str
    total_cost_microdollars: int
    request_count: int
    daily: list[Day]


class GroupDetailResponse(ApiModel):
    data: GroupDetail


GroupBy = Annotated[
    str, Query(alias="groupBy", description="A tag key, or api_key, customer, model or provider.")
]


def _grouping(group_by: str) -> tuple[str, Any]:
    """The column to group by, and a join on the tag table where grouping by a tag key."""
    if group_by in COLUMN_GROUPS:
        return group_by, COLUMN_GROUPS[group_by]
    if errors := tag_errors({group_by: ""}):
        raise invalid("; ".join(errors), parameter="groupBy")
    return group_by, CostEventTag.value


def _grouped(filters: EventFilters, group_by: str, key: Any) -> Any:
    query = filters.apply(select(key.label("key"), *TOTAL, COUNT.label("requests")))
    if key is CostEventTag.value:
        query = query.join(CostEventTag, col(CostEventTag.event_seq) == col(CostEvent.seq)).where(
            col(CostEventTag.key) == group_by
        )
    return query.group_by(key)


async def _groups(session: Session, filters: EventFilters, group_by: str, key: Any) -> list[Group]:
    rows = await session.execute(_grouped(filters, group_by, key).order_by(*BY_TOTAL))
    return [
        Group(key=r.key, total_cost_microdollars=total_of(r), request_count=r.requests)
        for r in rows
    ]


async def _days(
    session: Session,
    filters: EventFilters,
    extra: ColumnElement[bool] | None = None,
    join_tag: str | None = None,
) -> list[Day]:
    day = utc_day(session.bind.dialect.name)  # type: ignore[union-attr]
    query = filters.apply(select(day.label("day"), *TOTAL, COUNT.label("requests")))
    if join_tag is not None:
        query = query.join(CostEventTag, col(CostEventTag.event_seq) == col(CostEvent.seq)).where(
            col(CostEventTag.key) == join_tag
        )
    if extra is not None:
        query = query.where(extra)
    rows = await session.execute(query.group_by(day).order_by(day))
    return [Day(date=r.day, cost_microdollars=total_of(r), request_count=r.requests) for r in rows]


@router.get("/api/cost-events/summary")
async def summary(principal: Viewer, session: Session, query: Filters) -> SummaryResponse:
    filters = query.filters(principal.org_id, "30d")
    total = (await session.execute(filters.apply(select(*TOTAL, COUNT.label("requests"))))).one()
    return SummaryResponse(
        data=Summary(
            start=filters.start,
            end=filters.end,
            total_cost_microdollars=total_of(total),
            request_count=total.requests,
            by_day=await _days(session, filters),
            by_model=await _groups(session, filters, "model", CostEvent.model),
            by_provider=await _groups(session, filters, "provider", CostEvent.provider),
            by_api_key=await _groups(session, filters, "api_key", CostEvent.api_key_id),
        )
    )


@router.get("/api/cost-events/attribution")
async def attribution(
    principal: Viewer, session: Session, query: Filters, group_by: GroupBy
) -> Attribution:
    filters = query.filters(principal.org_id, "30d")
    group_by, key = _grouping(group_by)
    return Attribution(
        group_by=group_by,
        start=filters.start,
        end=filters.end,
        data=await _groups(session, filters, group_by, key),
    )


@router.get("/api/cost-events/attribution.csv", response_class=StreamingResponse)
async def attribution_csv(
    principal: Viewer, session: Session, query: Filters, group_by: GroupBy
) -> StreamingResponse:
    filters = query.filters(principal.org_id, "30d")
    group_by, key = _grouping(group_by)
    # Read whole (one row a group), and the connection given back before the first byte: a
    # cursor streamed to a client that reads slowly held it, and 25 such emptied the pool.
    rows = (await session.execute(_grouped(filters, group_by, key).order_by(*BY_TOTAL))).all()
    await end_read(session)

    async def lines() -> AsyncIterator[str]:
        yield _csv_line([group_by, "total_cost_microdollars", "request_count"])
        for row in rows:
            yield _csv_line([row.key, total_of(row), row.requests])

    return StreamingResponse(
        lines(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="attribution.csv"'},
    )


# Any text: a model name or tag value may hold a '/' ("openai/gpt-4o"), or be empty.
@router.get("/api/cost-events/attribution/{value:path}")
async def attribution_detail(
    value: str, principal: Viewer, session: Session, query: Filters, group_by: GroupBy
) -> GroupDetailResponse:
    filters = query.filters(principal.org_id, "30d")
    group_by, key = _grouping(group_by)
    is_tag = key is CostEventTag.value
    days = await _days(session, filters, key == value, group_by if is_tag else None)
    return GroupDetailResponse(
        data=GroupDetail(
            group_by=group_by,
            key=value,
            daily=days,
            total_cost_microdollars=sum(d.cost_microdollars for d in days),
            request_count=sum(d.request_count for d in days),
        )
    )
