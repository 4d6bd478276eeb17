"""Reading cost events: the filters, periods and cursor shared by the list, the CSV export,
the summary and attribution."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Query, Request
from sqlalchemy import ColumnElement, func, select
from sqlmodel import col

from nullspend.attribution import tag_errors
from nullspend.errors import ErrorCode
from nullspend.limits import BIGINT_MAX
from nullspend_server.db.tables import CostEvent, CostEventTag, utcnow
from nullspend_server.errors import ApiError

# Query parameter -> CostEvent column, for equality filters.
COLUMN_FILTERS = {
    "provider": CostEvent.provider,
    "model": CostEvent.model,
    "source": CostEvent.source,
    "apiKeyId": CostEvent.api_key_id,
    "sessionId": CostEvent.session_id,
    "traceId": CostEvent.trace_id,
    "customer": CostEvent.customer,
}
PERIODS = {"7d": 7, "30d": 30, "90d": 90}


def invalid(message: str, **details: Any) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, message, details or None)


Period = Literal["7d", "30d", "90d"]


@dataclass
class EventFilters:
    org_id: str
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def within(self, period: str | None, default_period: str | None) -> None:
        period = period or (None if self.start else default_period)
        if period is not None:
            self.end = self.end or utcnow()
            try:
                self.start = self.end - dt.timedelta(days=PERIODS[period])
            except OverflowError:  # a period back from the year 1
                raise invalid("to is too early for the period before it") from None
        if self.start and self.end and self.start > self.end:
            raise invalid("from must not be after to")

    def conditions(self) -> list[ColumnElement[bool]]:
        conditions = [col(CostEvent.org_id) == self.org_id]
        for name, value in self.columns.items():
            conditions.append(col(COLUMN_FILTERS[name]) == value)
        for key, value in self.tags.items():
            tagged = select(col(CostEventTag.event_seq)).where(
                col(CostEventTag.org_id) == self.org_id,
                col(CostEventTag.key) == key,
                col(CostEventTag.value) == value,
            )
            conditions.append(col(CostEvent.seq).in_(tagged))
        if self.start:
            conditions.append(col(CostEvent.created_at) >= self.start)
        if self.end:
            conditions.append(col(CostEvent.created_at) <= self.end)
        return conditions

    def apply(self, query: Any) -> Any:
        """``query`` restricted to the organization's events matching these filters."""
        return query.where(*self.conditions())


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        version, _, seq = text.partition(":")
        # A position is a stored seq: one past BIGINT could only fail in the database.
        if version != "v1" or not seq.isdecimal() or int(seq) > BIGINT_MAX:
            raise ValueError(cursor)
        return int(seq)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor is not one this API returned", parameter="cursor") from None


def utc_day(dialect: str) -> ColumnElement[Any]:
    """The UTC calendar day of an event, as a string YYYY-MM-DD, on either database."""
    created = col(CostEvent.created_at)
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", created), "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d", created)  # SQLite stores UTC already


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """In UTC, as stored; a date that UTC cannot hold (9999-12-31 at UTC-14) is refused."""
    if value is None:
        return None
    try:
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    except OverflowError:
        raise invalid("from and to must be dates between the years 1 and 9999 in UTC") from None


def _declared(route: Any) -> frozenset[str]:
    """The query parameters a route declares, its dependencies' included (a list's ``cursor``,
    an attribution's ``groupBy``): any other is refused. Kept on the route once found."""
    known: frozenset[str] | None = getattr(route, "_nullspend_query_parameters", None)
    if known is None:
        names: set[str] = set()
        pending = [route.dependant]
        while pending:
            dependant = pending.pop()
            names.update(param.alias for param in dependant.query_params)
            pending += dependant.dependencies
        known = frozenset(names)
        route._nullspend_query_parameters = known
    return known


class EventQuery:
    """The event filters, declared so that OpenAPI documents and FastAPI validates them. Tag
    filters (``tag.<key>=<value>``, any number) are read from the query string; any parameter
    the route does not declare is an error, since a misspelt filter must not widen the result."""

    def __init__(
        self,
        request: Request,
        provider: str | None = None,
        model: str | None = None,
        source: Literal["proxy", "api", "mcp"] | None = None,
        api_key_id: Annotated[str | None, Query(alias="apiKeyId")] = None,
        session_id: Annotated[str | None, Query(alias="sessionId")] = None,
        trace_id: Annotated[str | None, Query(alias="traceId")] = None,
        customer: str | None = None,
        start: Annotated[dt.datetime | None, Query(alias="from")] = None,
        end: Annotated[dt.datetime | None, Query(alias="to")] = None,
        period: Period | None = None,
    ) -> None:
        self.period = period
        columns = {
            "provider": provider,
            "model": model,
            "source": source,
            "apiKeyId": api_key_id,
            "sessionId": session_id,
            "traceId": trace_id,
            "customer": customer,
        }
        self.columns = {name: value for name, value in columns.items() if value is not None}
        self.start, self.end = _aware(start), _aware(end)
        self.tags: dict[str, str] = {}
        for name, value in request.query_params.multi_items():
            if name.startswith("tag."):
                if errors := tag_errors({name[4:]: value}):
                    raise invalid("; ".join(errors), parameter=name)
                self.tags[name[4:]] = value
            elif name not in _declared(request.scope["route"]):
                raise invalid(f"unknown query parameter {name!r}", parameter=name)

    def filters(self, org_id: str, default_period: str | None = None) -> EventFilters:
        filters = EventFilters(org_id, dict(self.columns), dict(self.tags), self.start, self.end)
        filters.within(self.period, default_period)
        return filters
