"""Request and response bodies: JSON fields in camelCase; unknown request fields are refused."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from nullspend.attribution import (
    CUSTOMER_PATTERN,
    MAX_MODEL,
    MAX_SESSION,
    MAX_TAG_VALUE,
    MAX_TAGS,
    RESERVED_TAG_PREFIX,
    TAG_KEY_PATTERN,
    customer_error,
    session_error,
    tag_errors,
    unstorable,
)
from nullspend.limits import BIGINT_MAX, MAX_CALL_MICRODOLLARS, MAX_DURATION_MS


class ApiModel(BaseModel):
    """A response body (or part of one)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class RequestModel(ApiModel):
    """A request body: a misspelt field is an error, not silently ignored; no text field may
    hold what a database cannot store (PostgreSQL refuses a NUL; SQLite would keep it)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        if isinstance(value, str) and unstorable(value):
            raise ValueError("text may not hold NUL or a lone surrogate")
        return value


def _valid_tags(tags: dict[str, Any]) -> dict[str, Any]:
    if errors := tag_errors(tags):
        raise ValueError("; ".join(errors))
    return tags


def _valid_customer(customer: str) -> str:
    if error := customer_error(customer):
        raise ValueError(error)
    return customer


def _valid_session(session_id: str) -> str:
    if error := session_error(session_id):
        raise ValueError(error)
    return session_id


# Strict: "5" or 5.0 is a type error, not silently an amount; bounded to the BIGINT columns.
Microdollars = Annotated[int, Field(strict=True, ge=0, le=BIGINT_MAX)]
TokenCount = Annotated[int, Field(strict=True, ge=0, le=BIGINT_MAX)]
CallMicrodollars = Annotated[int, Field(strict=True, ge=0, le=MAX_CALL_MICRODOLLARS)]
DurationMs = Annotated[int, Field(strict=True, ge=0, le=MAX_DURATION_MS)]
# The rules live in nullspend.attribution; the JSON schema states them for API clients.
Tags = Annotated[
    dict[str, str],
    AfterValidator(_valid_tags),
    Field(
        json_schema_extra={
            "maxProperties": MAX_TAGS,
            "propertyNames": {"pattern": f"^(?!{RESERVED_TAG_PREFIX}){TAG_KEY_PATTERN}$"},
            "additionalProperties": {"type": "string", "maxLength": MAX_TAG_VALUE},
        }
    ),
]
CustomerId = Annotated[
    str,
    AfterValidator(_valid_customer),
    Field(json_schema_extra={"pattern": f"^{CUSTOMER_PATTERN}$"}),
]
ModelName = Annotated[str, Field(min_length=1, max_length=MAX_MODEL)]
SessionId = Annotated[
    str,
    AfterValidator(_valid_session),
    Field(json_schema_extra={"minLength": 1, "maxLength": MAX_SESSION}),
]


T = TypeVar("T")


class Data(ApiModel, Generic[T]):
    """The ``{"data": ...}`` envelope of single-object responses."""

    data: T


class UsageIn(RequestModel):
    """Normalised usage (see ``nullspend.usage.Usage``): inputTokens is uncached input;
    reasoningTokens is part of outputTokens."""

    input_tokens: TokenCount = 0
    cache_read_tokens: TokenCount = 0
    cache_write_5m_tokens: TokenCount = Field(default=0, alias="cacheWrite5mTokens")
    cache_write_1h_tokens: TokenCount = Field(default=0, alias="cacheWrite1hTokens")
    output_tokens: TokenCount = 0
    reasoning_tokens: TokenCount = 0
    audio_input_tokens: TokenCount = 0
    audio_output_tokens: TokenCount = 0
    web_search_requests: TokenCount = 0
