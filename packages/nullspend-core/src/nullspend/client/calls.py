"""The server API's calls, described once for the sync and the async client: what to send, how
to read the answer, whether a retry is safe. The clients only move bytes and wait."""

from __future__ import annotations

import math
import random
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar, Unpack

import httpx
from pydantic import BaseModel, TypeAdapter

from nullspend.client.models import (
    Budget,
    BudgetStatus,
    CostEventPage,
    Extended,
    Introspection,
    NewCostEvent,
    RecordedBatch,
    RecordedEvent,
    Reservation,
    Settled,
)
from nullspend.errors import ApiError, ConflictError, ConnectionFailedError, ErrorCode, api_error
from nullspend.settings import CoreSettings
from nullspend.usage import Usage

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)
DEFAULT_MAX_RETRIES = 3
# The background thread's settles, releases and extensions: retried for about 2.5 minutes
# (backoff to 30 s between tries), a server's restart, where the caller's calls give up in 3.5 s.
BACKGROUND_RETRIES = 10
# Worth another try of a call that is safe to repeat: the server could not check budgets, a
# proxy in front of it failed, or the key's rate limit is full for now.
_RETRIED_CODES = {ErrorCode.BUDGET_UNAVAILABLE, ErrorCode.RATE_LIMITED}
_RETRIED_STATUSES = {502, 503, 504}
_MAX_WAIT_SECONDS = 30.0
_USAGE_FIELDS = {
    "input_tokens": "inputTokens",
    "cache_read_tokens": "cacheReadTokens",
    "cache_write_5m_tokens": "cacheWrite5mTokens",
    "cache_write_1h_tokens": "cacheWrite1hTokens",
    "output_tokens": "outputTokens",
    "reasoning_tokens": "reasoningTokens",
    "audio_input_tokens": "audioInputTokens",
    "audio_output_tokens": "audioOutputTokens",
    "web_search_requests": "webSearchRequests",
}


@dataclass(frozen=True)
class Connection:
    """Where the server is and the key to present, from the arguments or the environment
    (``NULLSPEND_BASE_URL``, ``NULLSPEND_API_KEY``)."""

    base_url: str
    api_key: str

    @classmethod
    def resolve(cls, api_key: str | None, base_url: str | None) -> Connection:
        settings = CoreSettings()
        key = api_key or (settings.api_key.get_secret_value() if settings.api_key else "")
        # A mounted secret or `$(cat file)` leaves a trailing newline, which no header carries.
        key, url = key.strip(), (base_url or settings.base_url or "").strip()
        if not url:
            raise ValueError(
                "no NullSpend server: pass base_url or set NULLSPEND_BASE_URL "
                "(nullspend.connect() runs in-process instead when no server is configured)"
            )
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL:
            parsed = None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"the NullSpend server's URL {url!r} is not an http(s) URL")
        if not key:
            raise ValueError("no API key: pass api_key or set NULLSPEND_API_KEY")
        if not (key.isascii() and key.isprintable()):  # the key itself is never echoed
            raise ValueError(
                "the API key (api_key or NULLSPEND_API_KEY) holds characters an HTTP header "
                "cannot carry"
            )
        return cls(url.rstrip("/"), key)

    def headers(self) -> dict[str, str]:
        return {"X-NullSpend-Key": self.api_key, "User-Agent": "nullspend-python"}


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    read: Callable[[Any], T]
    """Turns the answer's JSON into the result."""
    json: Any = None
    params: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = False
    """Safe to send again when the first try's outcome is unknown."""
    landed: Callable[[Exception], T | None] | None = None
    """For a call that was retried: the result a retry's refusal stands for when an earlier
    try did land (its answer lost on the way back), or None when the refusal is real."""

    def earlier_result(self, attempt: int, failure: Exception) -> T | None:
        return self.landed(failure) if attempt and self.landed is not None else None

    def request(self, connection: Connection) -> dict[str, Any]:
        """The arguments of ``httpx.Client.request`` (or ``AsyncClient``'s) for this call."""
        return {
            "method": self.method,
            "url": connection.base_url + self.path,
            "json": self.json,
            "params": self.params,
            "headers": {**connection.headers(), **self.headers},
        }

    def result(self, response: httpx.Response) -> T:
        if response.status_code >= 400:
            raise error_from(response)
        try:
            return self.read(response.json())
        except (ValueError, KeyError, TypeError) as error:  # pydantic's ValidationError too
            # Something between us and the server answered (a proxy's page): as no answer.
            raise ConnectionFailedError(
                f"{response.url}: HTTP {response.status_code} that is not NullSpend's answer "
                f"({response.headers.get('content-type')})"
            ) from error


def _data(model: type[BaseModel]) -> Callable[[Any], Any]:
    return lambda body: model.model_validate(body["data"])


def _listed(model: type[T], key: str) -> Callable[[Any], list[T]]:
    adapter = TypeAdapter(list[model])  # type: ignore[valid-type]
    return lambda body: adapter.validate_python(body[key])


def error_from(response: httpx.Response) -> ApiError:
    """The typed error for an error answer; one that is not NullSpend's JSON (a proxy's HTML
    page, say) still becomes an ``ApiError`` with the status."""
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details")
        upgrade_url = response.json().get("upgrade_url")
    except (ValueError, KeyError, TypeError):
        code = _code_for_status(response.status_code)
        message = f"HTTP {response.status_code}: {response.text[:200]}"
        details, upgrade_url = None, None
    return api_error(
        code,
        message,
        status=response.status_code,
        details=details if isinstance(details, Mapping) else None,
        retry_after=_retry_after(response),
        upgrade_url=upgrade_url if isinstance(upgrade_url, str) else None,
    )


def _code_for_status(status: int) -> str:
    return next((c for c in ErrorCode if c.http_status == status), ErrorCode.INTERNAL_ERROR)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
    # A misbehaving proxy's -1 (or nan, inf) is no wait to honour: the backoff applies instead.
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def wait_before_retry(attempt: int, failure: Exception) -> float | None:
    """Seconds to wait before try ``attempt + 1`` of an idempotent call that failed with
    ``failure``, or None when it must not be retried. Exponential backoff with jitter
    (0.5 s, 1 s, 2 s ...), or the server's Retry-After when it gave one."""
    if isinstance(failure, ApiError):
        retried = failure.code in _RETRIED_CODES or failure.status in _RETRIED_STATUSES
        if not retried:
            return None
        if failure.retry_after is not None:
            return min(failure.retry_after, _MAX_WAIT_SECONDS)
    elif not isinstance(failure, ConnectionFailedError):
        return None
    backoff: float = min(0.5 * 2**attempt, _MAX_WAIT_SECONDS)
    return backoff * random.uniform(0.8, 1.2)  # noqa: S311 (jitter, not a secret)


@dataclass
class Tries:
    """One call's tries so far, and whether the retry loop tries again: the same for the sync
    and the async client."""

    max_retries: int
    count: int = 0
    """Failed tries so far."""
    may_have_landed: bool = False
    """Whether a failed try may have been done by the server all the same, its answer lost:
    a retry's refusal (the key's rate limit, say) then says nothing of what that try did."""

    def wait_after(self, call: Call[Any], failure: Exception) -> float | None:
        """Seconds to wait before trying ``call`` again after ``failure``, or None when
        ``failure`` is final."""
        self.may_have_landed |= not refused(failure)
        wait = wait_before_retry(self.count, failure) if call.idempotent else None
        if wait is None or self.count >= self.max_retries:
            return None
        self.count += 1
        return wait


def connection_failed(connection: Connection, error: httpx.RequestError) -> ConnectionFailedError:
    """The error for a try that had no answer, or one whose body could not be decoded (a proxy's
    broken gzip): as no answer. httpx quotes a request header it could not send, which may be
    the key: of that error only its kind is told."""
    told = type(error).__name__ if isinstance(error, httpx.LocalProtocolError) else repr(error)
    return ConnectionFailedError(f"{connection.base_url}: {told}")


# --- the calls -----------------------------------------------------------------------------


def introspect() -> Call[Introspection]:
    return Call("GET", "/api/auth/introspect", _data(Introspection), idempotent=True)


def budgets() -> Call[list[Budget]]:
    return Call("GET", "/api/budgets", _listed(Budget, "data"), idempotent=True)


def budget_status() -> Call[list[BudgetStatus]]:
    return Call("GET", "/api/budgets/status", _listed(BudgetStatus, "entities"), idempotent=True)


class ReserveOptions(TypedDict, total=False):
    model: str
    provider: str
    request: Mapping[str, Any]
    """The provider request body, for the server to estimate as the proxy does."""
    wire_format: str
    """``openai.chat``, ``openai.responses``, ``anthropic.messages`` or
    ``gemini.generate_content``; inferred from the request when omitted."""
    customer: str
    session_id: str
    trace_id: str
    tags: Mapping[str, str]
    reservation_id: str
    """The caller's id for it (``rsv_`` and 16-36 letters, digits, ``_`` or ``-``; the clients
    make one): a reserve sent again with it answers the reservation it made, so a reserve
    whose answer was lost is retried, or released, rather than held unused."""


def new_reservation_id() -> str:
    return f"rsv_{uuid.uuid4().hex}"


def refused(error: BaseException) -> bool:
    """Whether ``error`` is the server's answer that it did nothing (a denial, a refused
    request). Anything else (no answer, a timeout, a cancellation, a server failure) may have
    come after it did what was asked: made a reservation, say."""
    return isinstance(error, ApiError) and error.status is not None and error.status < 500


def reserve(
    estimate_microdollars: int | None, **options: Unpack[ReserveOptions]
) -> Call[Reservation]:
    request = options.get("request")
    body = {
        "estimateMicrodollars": estimate_microdollars,
        "model": options.get("model"),
        "provider": options.get("provider"),
        "request": dict(request) if request is not None else None,
        "format": options.get("wire_format"),
        "customer": options.get("customer"),
        "sessionId": options.get("session_id"),
        "traceId": options.get("trace_id"),
        "tags": dict(options.get("tags") or {}),
        "reservationId": options.get("reservation_id"),
    }
    # With its id, a retry after a lost answer gets the reservation made; without, it would
    # reserve twice.
    return Call(
        "POST",
        "/api/reservations",
        _data(Reservation),
        json=_present(body),
        idempotent="reservation_id" in options,
    )


class SettleOptions(TypedDict, total=False):
    cost_microdollars: int
    usage: Usage
    """Priced with the server's catalog when no cost is given."""
    service_tier: str
    """The processing tier the answer says served the call (OpenAI's ``service_tier``): the
    usage is priced at its rates."""
    model: str
    provider: str
    duration_ms: int
    event_type: str
    trace_id: str


def settle(reservation_id: str, **options: Unpack[SettleOptions]) -> Call[Settled]:
    usage = options.get("usage")
    body = {
        "costMicrodollars": options.get("cost_microdollars"),
        "usage": _usage(usage) if usage is not None else None,
        "serviceTier": options.get("service_tier"),
        "model": options.get("model"),
        "provider": options.get("provider"),
        "durationMs": options.get("duration_ms"),
        "eventType": options.get("event_type"),
        "traceId": options.get("trace_id"),
    }
    # Retried: a settle whose first try landed is refused as already settled, which is success.
    return Call(
        "POST",
        _reservation_path(reservation_id, "/settle"),
        _data(Settled),
        json=_present(body),
        idempotent=True,
        landed=_already(reservation_id, "settled"),
    )


def release(reservation_id: str) -> Call[Settled]:
    return Call(
        "DELETE",
        _reservation_path(reservation_id),
        _data(Settled),
        idempotent=True,
        landed=_already(reservation_id, "released"),
    )


def extend(reservation_id: str) -> Call[Extended]:
    # Retried: a second extension only moves the expiry again.
    return Call(
        "POST", _reservation_path(reservation_id, "/extend"), _data(Extended), idempotent=True
    )


def _reservation_path(reservation_id: str, action: str = "") -> str:
    # One path segment, whatever the id holds: "../budgets/bgt_..." must not name another
    # resource (a release of it deleted that budget).
    return f"/api/reservations/{urllib.parse.quote(reservation_id, safe='')}{action}"


def _already(reservation_id: str, status: str) -> Callable[[Exception], Settled | None]:
    """A retry's 409 saying the reservation is already ``status``: an earlier try's work."""

    def landed(failure: Exception) -> Settled | None:
        if isinstance(failure, ConflictError) and failure.details.get("status") == status:
            return Settled(reservation_id=reservation_id, status=status)
        return None

    return landed


def report(event: NewCostEvent, idempotency_key: str | None) -> Call[RecordedEvent]:
    # With a key the server records the event once however often it is sent: safe to retry.
    key = idempotency_key or uuid.uuid4().hex
    return Call(
        "POST",
        "/api/cost-events",
        _data(RecordedEvent),
        json=event.wire(),
        headers={"Idempotency-Key": key},
        idempotent=True,
    )


def report_batch(events: list[NewCostEvent], idempotency_key: str | None) -> Call[RecordedBatch]:
    # As with report: with a key the server records the batch once, so a retry is safe.
    return Call(
        "POST",
        "/api/cost-events/batch",
        RecordedBatch.model_validate,
        json={"events": [e.wire() for e in events]},
        headers={"Idempotency-Key": idempotency_key or uuid.uuid4().hex},
        idempotent=True,
    )


class EventFilters(TypedDict, total=False):
    provider: str
    model: str
    source: str
    session_id: str
    trace_id: str
    customer: str
    tags: Mapping[str, str]
    """Events carrying every one of these tags."""


def cost_events(
    limit: int, cursor: str | None, **filters: Unpack[EventFilters]
) -> Call[CostEventPage]:
    params = _present(
        {
            "limit": limit,
            "cursor": cursor,
            "provider": filters.get("provider"),
            "model": filters.get("model"),
            "source": filters.get("source"),
            "sessionId": filters.get("session_id"),
            "traceId": filters.get("trace_id"),
            "customer": filters.get("customer"),
            **{f"tag.{k}": v for k, v in (filters.get("tags") or {}).items()},
        }
    )
    return Call(
        "GET", "/api/cost-events", CostEventPage.model_validate, params=params, idempotent=True
    )


def _present(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _usage(usage: Usage) -> dict[str, int]:
    return {wire: getattr(usage, name) for name, wire in _USAGE_FIELDS.items()}
