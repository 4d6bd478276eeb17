"""The schema. Money columns are BIGINT microdollars; times are timezone-aware UTC.

Tags live in their own table (one row per key and value) rather than a JSON column, so that tag
filters and tag attribution are plain indexed joins on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    Table,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every dialect (SQLite would otherwise hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _when(**kwargs: Any) -> Any:
    return Field(sa_column=Column(UTCDateTime(), **kwargs))


def _bigint(**kwargs: Any) -> Any:
    return Field(default=0, sa_column=Column(BigInteger, nullable=False, **kwargs))


class Organization(SQLModel, table=True):
    __tablename__ = "organizations"

    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    created_at: dt.datetime = _when(nullable=False)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=40)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=40)
    name: str = Field(max_length=200)
    role: str = Field(max_length=16)
    key_hash: str = Field(unique=True, max_length=64)
    """SHA-256 hex digest of the key; the key itself is never stored."""
    prefix: str = Field(max_length=19)
    default_tags: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    created_at: dt.datetime = _when(nullable=False)
    revoked_at: dt.datetime | None = _when(nullable=True)


class CostEvent(SQLModel, table=True):
    __tablename__ = "cost_events"
    __table_args__ = (
        UniqueConstraint("org_id", "idempotency_key"),
        Index("ix_cost_events_org_seq", "org_id", "seq"),
        Index("ix_cost_events_org_created", "org_id", "created_at"),
    )

    # Monotonic insertion order: the pagination cursor, stable under concurrent inserts.
    seq: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    id: str = Field(unique=True, max_length=40)
    org_id: str = Field(foreign_key="organizations.id", max_length=40)
    api_key_id: str | None = Field(default=None, index=True, max_length=40)
    source: str = Field(max_length=16)
    provider: str = Field(max_length=64)
    model: str = Field(max_length=256)
    input_tokens: int = _bigint()
    output_tokens: int = _bigint()
    cached_input_tokens: int = _bigint()
    cache_write_5m_tokens: int = _bigint()
    cache_write_1h_tokens: int = _bigint()
    reasoning_tokens: int = _bigint()
    audio_input_tokens: int = _bigint()
    audio_output_tokens: int = _bigint()
    web_search_requests: int = _bigint()
    cost_microdollars: int = _bigint()
    duration_ms: int | None = None
    session_id: str | None = Field(default=None, index=True, max_length=256)
    trace_id: str | None = Field(default=None, index=True, max_length=64)
    customer: str | None = Field(default=None, index=True, max_length=256)
    event_type: str | None = Field(default=None, max_length=64)
    upstream_status: int | None = None
    reservation_id: str | None = Field(default=None, max_length=40)
    action_id: str | None = Field(default=None, max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=256)
    request_hash: str | None = Field(default=None, max_length=64)
    """SHA-256 of the ingested body: a retry with the same Idempotency-Key must match it."""
    tags: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: dt.datetime = _when(nullable=False)


class CostEventTag(SQLModel, table=True):
    __tablename__ = "cost_event_tags"
    __table_args__ = (Index("ix_cost_event_tags_lookup", "org_id", "key", "value"),)

    event_seq: int = Field(
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    )
    key: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=256)
    org_id: str = Field(max_length=40)


class Budget(SQLModel, table=True):
    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("org_id", "entity_type", "entity_id"),)

    id: str = Field(primary_key=True, max_length=40)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=40)
    entity_type: str = Field(max_length=16)
    entity_id: str = Field(max_length=400)
    limit_microdollars: int = _bigint()
    spend_microdollars: int = _bigint()
    reserved_microdollars: int = _bigint()
    policy: str = Field(max_length=16)
    reset_interval: str = Field(max_length=16)
    current_period_start: dt.datetime | None = _when(nullable=True)
    threshold_percentages: list[int] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    velocity_limit_microdollars: int | None = Field(default=None, sa_column=Column(BigInteger))
    velocity_window_seconds: int = 60
    velocity_cooldown_seconds: int = 60
    velocity_window_start: dt.datetime | None = _when(nullable=True)
    velocity_current_microdollars: int = _bigint()
    velocity_previous_microdollars: int = _bigint()
    velocity_cooldown_until: dt.datetime | None = _when(nullable=True)
    session_limit_microdollars: int | None = Field(default=None, sa_column=Column(BigInteger))
    upgrade_url: str | None = Field(default=None, max_length=2000)
    created_at: dt.datetime = _when(nullable=False)
    updated_at: dt.datetime = _when(nullable=False)


class SessionSpend(SQLModel, table=True):
    __tablename__ = "session_spend"

    org_id: str = Field(primary_key=True, max_length=40)
    session_id: str = Field(primary_key=True, max_length=256)
    spend_microdollars: int = _bigint()
    reserved_microdollars: int = _bigint()
    updated_at: dt.datetime = _when(nullable=False)


class Reservation(SQLModel, table=True):
    __tablename__ = "reservations"
    __table_args__ = (Index("ix_reservations_status_expires", "status", "expires_at"),)

    id: str = Field(primary_key=True, max_length=40)
    org_id: str = Field(foreign_key="organizations.id", index=True, max_length=40)
    api_key_id: str = Field(max_length=40)
    status: str = Field(max_length=16)
    """active, settled, released, or expired (settled at the estimate)."""
    estimate_microdollars: int = _bigint()
    budget_ids: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    source: str = Field(max_length=16)
    provider: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=256)
    customer: str | None = Field(default=None, max_length=256)
    session_id: str | None = Field(default=None, max_length=256)
    trace_id: str | None = Field(default=None, max_length=64)
    tags: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    instance_id: str = Field(max_length=40)
    """The server process that holds it: recovered when that process stops heart-beating."""
    created_at: dt.datetime = _when(nullable=False)
    expires_at: dt.datetime = _when(nullable=False)
    finished_at: dt.datetime | None = _when(nullable=True)


class ServerInstance(SQLModel, table=True):
    __tablename__ = "server_instances"

    id: str = Field(primary_key=True, max_length=40)
    started_at: dt.datetime = _when(nullable=False)
    heartbeat_at: dt.datetime = _when(nullable=False)


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined,no-any-return]


# The tables themselves, for Core statements (the enforcement engine's hot path builds no ORM
# objects).
BUDGETS = _table(Budget)
COST_EVENTS = _table(CostEvent)
COST_EVENT_TAGS = _table(CostEventTag)
RESERVATIONS = _table(Reservation)
SESSION_SPEND = _table(SessionSpend)
