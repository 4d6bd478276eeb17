"""What the server API answers, typed. Fields are snake_case here and camelCase on the wire;
fields a newer server adds are ignored, so an older SDK keeps working."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Introspection(ApiModel):
    """Who the SDK's key is."""

    key_id: str
    org_id: str
    role: str
    api_version: str


class BudgetStatus(ApiModel):
    """A budget's amounts in its current period."""

    entity_type: str
    entity_id: str
    limit_microdollars: int
    spend_microdollars: int
    reserved_microdollars: int
    remaining_microdollars: int
    policy: str
    reset_interval: str
    current_period_start: dt.datetime | None = None


class Budget(BudgetStatus):
    id: str
    threshold_percentages: list[int] = Field(default_factory=list)
    velocity_limit_microdollars: int | None = None
    velocity_window_seconds: int | None = Field(default=None, alias="windowSeconds")
    velocity_cooldown_seconds: int | None = Field(default=None, alias="cooldownSeconds")
    session_limit_microdollars: int | None = None
    upgrade_url: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class Reservation(ApiModel):
    """An admitted estimate: settle it with the actual cost, or release it."""

    reservation_id: str
    estimate_microdollars: int
    expires_at: dt.datetime
    unpriced: bool = False


class Extended(ApiModel):
    """A reservation given a full lifetime again: its call is still going."""

    reservation_id: str
    expires_at: dt.datetime


class Settled(ApiModel):
    reservation_id: str
    status: str
    cost_event_id: str | None = None
    cost_microdollars: int | None = None


class RecordedEvent(ApiModel):
    """A cost event the server stored."""

    id: str
    created_at: dt.datetime
    cost_microdollars: int


MAX_BATCH = 100
"""The most events one ``report_batch`` records: the API's limit."""


class RecordedBatch(ApiModel):
    inserted: int
    ids: list[str]


class CostEvent(ApiModel):
    id: str
    created_at: dt.datetime
    source: str
    provider: str
    model: str
    api_key_id: str | None = None
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cache_write_5m_tokens: int = Field(default=0, alias="cacheWrite5mTokens")
    cache_write_1h_tokens: int = Field(default=0, alias="cacheWrite1hTokens")
    reasoning_tokens: int
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    web_search_requests: int = 0
    cost_microdollars: int
    duration_ms: int | None = None
    session_id: str | None = None
    trace_id: str | None = None
    customer: str | None = None
    event_type: str | None = None
    upstream_status: int | None = None
    reservation_id: str | None = None
    action_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class CostEventPage(ApiModel):
    """Newest first; pass ``cursor`` back for the next page (None: this was the last)."""

    data: list[CostEvent]
    cursor: str | None = None


class NewCostEvent(ApiModel):
    """A call to report. Without ``cost_microdollars`` the server prices the usage with its
    catalog."""

    provider: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_5m_tokens: int = Field(default=0, alias="cacheWrite5mTokens")
    cache_write_1h_tokens: int = Field(default=0, alias="cacheWrite1hTokens")
    reasoning_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    web_search_requests: int = 0
    service_tier: str | None = None
    """The processing tier that served the call: the usage is priced at its rates."""
    cost_microdollars: int | None = None
    duration_ms: int | None = None
    session_id: str | None = None
    trace_id: str | None = None
    customer: str | None = None
    event_type: str | None = None
    action_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)

    def wire(self) -> dict[str, object]:
        return self.model_dump(by_alias=True, exclude_none=True)
