"""The proxy routes. Per request: rate limit -> authenticate -> attribution -> estimate ->
reserve (the engine: period reset, session, velocity, budgets) -> forward -> settle.

Bytes from the upstream reach the client as they arrive; usage is read on the side. The only
change ever made to a response: when the proxy had to ask an OpenAI chat stream for its usage
(the client did not), the usage-only chunk it asked for is taken out again.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp
from starlette.datastructures import State
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from yarl import URL

from nullspend.attribution import (
    TAG_CANCELLED,
    TAG_ESTIMATED,
    TAG_NO_USAGE,
    TAG_UNPRICED,
    model_error,
)
from nullspend.errors import ErrorCode
from nullspend.limits import MAX_CALL_MICRODOLLARS
from nullspend.pricing import Estimate, estimate_request, reading_cost, unrecordable
from nullspend.wire import (
    ANTHROPIC_MESSAGES,
    NO_READING,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    Reading,
    WireFormat,
    reading_of_body,
)
from nullspend.wire.usage_chunks import UsageChunkFilter, asking_for_usage
from nullspend_server.auth import Principal, principal_for
from nullspend_server.db.database import STORAGE_ERRORS
from nullspend_server.engine import DeniedError, Engine, ReservationRequest, Settlement, Tightest
from nullspend_server.errors import (
    ApiError,
    denial_error,
    error_response_for,
    estimate_above_a_call,
)
from nullspend_server.keys import KEY_PATTERN
from nullspend_server.proxy.headers import (
    NOT_RETURNED,
    Attribution,
    nullspend_key,
    read_attribution,
    upstream_headers,
)
from nullspend_server.proxy.upstream import NOT_SENT_ERRORS, UPSTREAM_ERRORS
from nullspend_server.settings import ServerSettings

PRICED: dict[str, tuple[str, WireFormat]] = {
    "/v1/chat/completions": ("openai", OPENAI_CHAT),
    "/v1/responses": ("openai", OPENAI_RESPONSES),
    "/v1/responses/compact": ("openai", OPENAI_RESPONSES),  # a compaction: usage, no model
    "/v1/messages": ("anthropic", ANTHROPIC_MESSAGES),
}
FREE = {("POST", "/v1/messages/count_tokens"), ("GET", "/v1/models")}


@dataclass
class Call:
    """One priced call as it goes through the pipeline."""

    principal: Principal
    wire: WireFormat
    provider: str
    attribution: Attribution
    estimate: Estimate
    reservation_id: str
    started: float
    blocked_since: float | None = None
    """When a send to the client began that has not returned (``time.monotonic()``): a client
    that stopped reading, whose call's reservation is then no longer kept from expiring."""


@dataclass(slots=True)
class Incoming:
    """A proxied request as the ASGI server handed it over, its headers decoded once into a
    dict (lower-case names; a repeated header keeps its first value). Lighter than Starlette's
    ``Request``, whose header lookups scan the raw list each time.

    Values are read as UTF-8, as clients send non-ASCII text (a tag's value, say), as our
    response headers are encoded and as aiohttp encodes what is forwarded; bytes that are not
    UTF-8 are read as latin-1."""

    method: str
    path: str
    query: bytes
    headers: dict[str, str]
    receive: Receive
    state: State

    @classmethod
    def from_scope(cls, scope: Scope, receive: Receive) -> Incoming:
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            try:
                text = value.decode()
            except UnicodeDecodeError:
                text = value.decode("latin-1")
            headers.setdefault(name.decode("latin-1").lower(), text)
        path, query = scope["path"], scope["query_string"]
        return cls(scope["method"], path, query, headers, receive, scope["app"].state)

    @property
    def settings(self) -> ServerSettings:
        settings: ServerSettings = self.state.settings
        return settings

    @property
    def engine(self) -> Engine:
        engine: Engine = self.state.engine
        return engine

    @property
    def upstream(self) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession = self.state.upstream
        return session


class Buffered:
    """A whole response, sent as two ASGI messages."""

    def __init__(self, content: bytes, status: int, headers: dict[str, str]) -> None:
        self.content = content
        self.status = status
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _raw_headers(self.headers)
        headers.append((b"content-length", str(len(self.content)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.content})


def _raw_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    # UTF-8 with surrogateescape gives back exactly the bytes aiohttp decoded an upstream
    # header from, and encodes our own values (a tag's, say) whatever their characters.
    return [
        (k.lower().encode("latin-1"), v.encode("utf-8", "surrogateescape"))
        for k, v in headers.items()
    ]


def _upstream_base(provider: str, chosen: str | None, settings: ServerSettings) -> str:
    if chosen is None:
        return settings.anthropic_upstream if provider == "anthropic" else settings.openai_upstream
    if chosen.rstrip("/") not in {u.rstrip("/") for u in settings.upstream_allowlist}:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "X-NullSpend-Upstream is not in NULLSPEND_UPSTREAM_ALLOWLIST",
            {"upstream": chosen},
        )
    return chosen.rstrip("/")


async def proxy_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The proxy as a plain ASGI app, reached before FastAPI's middleware and routing (see
    ``nullspend_server.app``): they would cost more than the proxy's own work. Errors are
    answered in the same format as the API's."""
    response: ASGIApp
    try:
        response = await proxy(Incoming.from_scope(scope, receive))
    except ClientDisconnect:
        return  # gone before its request was read: nothing reserved, no one to answer
    except Exception as error:
        response = error_response_for(error)
    await response(scope, receive, send)


async def proxy(request: Incoming) -> ASGIApp:
    started = time.perf_counter()
    route, method, settings = request.path, request.method, request.settings
    key = nullspend_key(request.headers)
    # Counted per well-formed key (before the lookup it protects): made-up ones share one
    # count, where each was kept for the rest of the minute.
    request.state.rate_limiter.enforce(key if key and KEY_PATTERN.fullmatch(key) else "")
    principal = await principal_for(key, request.state.db, request.state.key_cache)
    if (method, route) in FREE:
        provider = (
            "anthropic"
            if "x-api-key" in request.headers or route.endswith("count_tokens")
            else "openai"
        )
        return await _forward_free(request, route, provider, settings)
    if method != "POST" or route not in PRICED:
        raise ApiError(
            ErrorCode.NOT_FOUND,
            f"{method} {route} is not a proxied route: nothing reaches a provider unpriced",
            {"path": route},
        )
    provider, wire = PRICED[route]
    return await _priced(request, route, provider, wire, principal, settings, started)


async def _read_body(request: Incoming, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, f"request bodies are limited to {limit} bytes")
    body = bytearray()
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        body += message.get("body", b"")
        if len(body) > limit:
            raise ApiError(
                ErrorCode.PAYLOAD_TOO_LARGE, f"request bodies are limited to {limit} bytes"
            )
        if not message.get("more_body", False):
            return bytes(body)


async def _priced(
    request: Incoming,
    route: str,
    provider: str,
    wire: WireFormat,
    principal: Principal,
    settings: ServerSettings,
    started: float,
) -> ASGIApp:
    raw = await _read_body(request, settings.max_body_bytes)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR, "the request body is nested too deeply to read"
        ) from None
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(ErrorCode.VALIDATION_ERROR, "the request body must be a JSON object")
    attribution = read_attribution(request.headers)
    base = _upstream_base(provider, attribution.upstream, settings)
    estimate = estimate_request(wire, body, raw)
    named = estimate.requested_model
    if named is not None and (unnamable := model_error(named)):
        raise ApiError(ErrorCode.VALIDATION_ERROR, unnamable)
    if estimate.microdollars > MAX_CALL_MICRODOLLARS:
        raise estimate_above_a_call()
    if estimate.unpriced and settings.deny_unpriced:
        raise ApiError(
            ErrorCode.UNPRICED_MODEL,
            f"model {estimate.requested_model!r} is not in the pricing catalog",
            {"model": estimate.requested_model},
            headers={"X-NullSpend-Denied": "1"},
        )
    streamed = body.get("stream") is True
    asking = asking_for_usage(wire, body, raw)
    strip_usage = asking is not None  # the usage chunk is hidden again below
    raw = asking or raw
    engine = request.engine
    try:
        admission = await engine.reserve(
            principal,
            ReservationRequest(
                estimate_microdollars=estimate.microdollars,
                source="proxy",
                provider=provider,
                model=estimate.requested_model,
                customer=attribution.customer,
                session_id=attribution.session_id,
                trace_id=attribution.trace_id,
                tags=attribution.tags,
            ),
        )
    except DeniedError as denied:
        error = denial_error(denied.denial)
        error.headers.update(_nullspend_headers(request, attribution))
        raise error from None
    except STORAGE_ERRORS:
        raise ApiError(
            ErrorCode.BUDGET_UNAVAILABLE,
            "budgets cannot be checked right now; the call was not forwarded",
            headers=_nullspend_headers(request, attribution),
        ) from None
    reservation_id = admission.reservation_id
    call = Call(principal, wire, provider, attribution, estimate, reservation_id, started)
    engine.hold(reservation_id, call)
    headers = upstream_headers(request.headers)
    if "traceparent" not in headers:
        headers["traceparent"] = f"00-{attribution.trace_id}-{attribution.trace_id[:16]}-01"
    sent_at = time.perf_counter()
    try:
        upstream = await request.upstream.post(
            _target(base, route, request), headers=headers, data=raw
        )
    except UPSTREAM_ERRORS as error:
        # Sent but not answered: charged its estimate, as an answer that breaks off is.
        sent = not isinstance(error, NOT_SENT_ERRORS)
        spent = _settlement(call, NO_READING, None, ()) if sent else None
        raise _upstream_failed(request, call, engine, f"did not answer: {error!r}", spent) from None
    upstream_started = time.perf_counter()
    response_headers = _returned_headers(upstream)
    response_headers.update(_nullspend_headers(request, attribution))
    response_headers.update(_budget_headers(admission.tightest))
    if upstream.status >= 300 or not streamed:
        try:
            content = await _read_all(upstream)
        except UPSTREAM_ERRORS as error:
            # After a 2xx status the provider ran the call and bills it: charged its estimate,
            # as a stream that breaks off is.
            ran = upstream.status < 300
            spent = _settlement(call, NO_READING, upstream.status, ()) if ran else None
            raise _upstream_failed(request, call, engine, f"broke off: {error!r}", spent) from None
    if upstream.status >= 300:  # the provider refused: pass it on, spend nothing
        engine.settle_later(principal.org_id, reservation_id, None)
        return Buffered(content, upstream.status, response_headers)
    if not streamed:
        received_at = time.perf_counter()
        settlement = _settlement(call, reading_of_body(wire, content), upstream.status, ())
        engine.settle_later(principal.org_id, reservation_id, settlement)
        response_headers["X-NullSpend-Cost-Microdollars"] = str(settlement.cost_microdollars)
        own = (sent_at - started) + (time.perf_counter() - received_at)
        response_headers["x-nullspend-overhead-ms"] = _ms(own)
        return Buffered(content, upstream.status, response_headers)
    own = (sent_at - started) + (time.perf_counter() - upstream_started)
    response_headers["x-nullspend-overhead-ms"] = _ms(own)
    return StreamRelay(call, upstream, engine, strip_usage, response_headers)


class StreamRelay:
    """The response to a streamed call: the upstream's bytes passed on as they arrive, usage
    read on the side, settled at the end however it ends (complete, cut short by the upstream,
    or abandoned by the client, which closes the upstream call at once).

    Plain ASGI rather than Starlette's ``StreamingResponse``, whose disconnect watch (an anyio
    task group per response) cost more than the rest of the time to first byte."""

    def __init__(
        self,
        call: Call,
        upstream: aiohttp.ClientResponse,
        engine: Engine,
        strip_usage: bool,
        headers: dict[str, str],
    ) -> None:
        self.call = call
        self.upstream = upstream
        self.engine = engine
        self.strip_usage = strip_usage
        self.headers = headers
        self.client_left = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upstream, call = self.upstream, self.call
        accumulator = call.wire.stream()
        chunk_filter = UsageChunkFilter() if self.strip_usage else None
        watch = asyncio.get_running_loop().create_task(self._watch_client(receive))
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status,
                    "headers": _raw_headers(self.headers),
                }
            )
            async for chunk in upstream.content.iter_any():
                out = chunk_filter.feed(chunk) if chunk_filter else chunk
                if out:
                    call.blocked_since = time.monotonic()
                    await send({"type": "http.response.body", "body": out, "more_body": True})
                    call.blocked_since = None
                accumulator.feed(chunk)  # after passing it on: usage is not the client's wait
            if chunk_filter and (rest := chunk_filter.finish()):
                await send({"type": "http.response.body", "body": rest, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except UPSTREAM_ERRORS:
            if not self.client_left:
                raise  # the upstream broke off: the client sees its stream break off too
        finally:
            watch.cancel()
            if not self.client_left:  # else the watch has closed it
                upstream.release()
            extra = (TAG_CANCELLED,) if self.client_left else ()
            settlement = _settlement(call, accumulator.finish(), upstream.status, extra)
            self.engine.settle_later(call.principal.org_id, call.reservation_id, settlement)

    async def _watch_client(self, receive: Receive) -> None:
        """Until the client goes away; then the upstream call is closed, which ends the relay."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.client_left = True
        self.upstream.close()


def _upstream_failed(
    request: Incoming, call: Call, engine: Engine, what: str, spent: Settlement | None = None
) -> ApiError:
    """The call failed before its answer was complete: settled as ``spent``, by default
    nothing (the estimate is released)."""
    engine.settle_later(call.principal.org_id, call.reservation_id, spent)
    return ApiError(
        ErrorCode.UPSTREAM_UNAVAILABLE,
        f"the upstream {what}",
        headers=_nullspend_headers(request, call.attribution),
    )


def _settlement(
    call: Call, reading: Reading, status: int | None, extra_tags: tuple[str, ...]
) -> Settlement:
    """The actual cost when the response carried usage of a priced model; else the estimate,
    tagged with why."""
    model = reading.model or call.estimate.requested_model
    priced, cost = reading_cost(reading, call.estimate.requested_model)
    usage = reading.billed_usage()
    if unrecordable(cost, usage):  # a broken gateway's counts: charged the estimate
        cost = usage = None
    tags = dict.fromkeys(extra_tags, "true")
    if usage is None:
        tags[TAG_NO_USAGE] = "true"
    if priced is None or (usage is not None and cost is None):
        tags[TAG_UNPRICED] = "true"
    if cost is None:
        cost = call.estimate.microdollars
        tags[TAG_ESTIMATED] = "true"
    return Settlement(
        cost_microdollars=cost,
        provider=call.provider,
        model=model,
        usage=usage,
        duration_ms=int((time.perf_counter() - call.started) * 1000),
        upstream_status=status,
        trace_id=call.attribution.trace_id,
        system_tags=tags,
    )


def _nullspend_headers(request: Incoming, attribution: Attribution) -> dict[str, str]:
    headers = {
        "X-NullSpend-Trace-Id": attribution.trace_id,
        "NullSpend-Version": request.settings.api_version,
    }
    if attribution.session_id:
        headers["X-NullSpend-Session"] = attribution.session_id
    if attribution.warnings:
        headers["X-NullSpend-Warning"] = " | ".join(attribution.warnings)
    return headers


_VISIBLE_ASCII = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def _budget_headers(tightest: Tightest | None) -> dict[str, str]:
    if tightest is None:
        return {}
    return {
        # A tag's value may hold any character: percent-encoded where HTTP would not carry it.
        "X-NullSpend-Budget-Entity": quote(tightest.entity, safe=_VISIBLE_ASCII),
        "X-NullSpend-Budget-Limit": str(tightest.limit_microdollars),
        "X-NullSpend-Budget-Spent": str(tightest.spent_microdollars),
        "X-NullSpend-Budget-Remaining": str(tightest.remaining_microdollars),
    }


def _ms(seconds: float) -> str:
    return f"{max(seconds, 0) * 1000:.3f}"


async def _forward_free(
    request: Incoming, route: str, provider: str, settings: ServerSettings
) -> Buffered:
    """count_tokens and model listings: forwarded, not priced (they cost nothing)."""
    base = _upstream_base(provider, request.headers.get("x-nullspend-upstream"), settings)
    try:
        async with request.upstream.request(
            request.method,
            _target(base, route, request),
            headers=upstream_headers(request.headers),
            data=await _read_body(request, settings.max_body_bytes),
        ) as upstream:
            content = await upstream.read()
    except UPSTREAM_ERRORS as error:
        raise ApiError(
            ErrorCode.UPSTREAM_UNAVAILABLE, f"the upstream did not answer: {error!r}"
        ) from None
    return Buffered(content, upstream.status, _returned_headers(upstream))


def _target(base: str, route: str, request: Incoming) -> URL:
    """The upstream URL: the route (one of the fixed proxied paths) and the query string as
    the client sent it, not re-encoded."""
    query = request.query
    return URL(f"{base}{route}?{query.decode('latin-1')}" if query else base + route, encoded=True)


def _returned_headers(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() not in NOT_RETURNED}


async def _read_all(upstream: aiohttp.ClientResponse) -> bytes:
    async with upstream:
        return await upstream.read()
