"""httpx transports that meter the provider calls they carry: reserve, forward, settle (or
release). Bytes pass through as they arrive; a denial raises before anything is sent.

They serve httpx and its fork httpx2 (which newer anthropic SDKs use) alike: the two have the
same transport interface, but each client accepts only its own module's byte streams, so the
metered stream is made per module (``http``)."""

from __future__ import annotations

import _thread
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

from nullspend.client.renewal import Renewal
from nullspend.errors import ApiError, BudgetUnavailableError, ConnectionFailedError, NullSpendError
from nullspend.tracked.metering import (
    Metered,
    Routes,
    Scope,
    may_have_been_taken,
    spends_unpriced,
    unmetered_route_error,
)
from nullspend.wire import NO_READING, Reading
from nullspend.wire.base import StreamAccumulator

if TYPE_CHECKING:
    from nullspend.client.aio import AsyncNullSpend
    from nullspend.client.sync import NullSpend

RaiseAs = Callable[[ApiError], Exception]
"""Turns a NullSpend error into what the provider SDK lets through unwrapped (see providers)."""
Settle = Callable[[Metered, Reading], None]


def refusal(error: NullSpendError, raise_as: RaiseAs) -> Exception:
    """``error`` (a denial, or the server out of reach: budgets cannot be checked, so the call
    is refused) as the provider SDK lets it through unwrapped: the LlamaIndex gate uses it too."""
    if isinstance(error, ConnectionFailedError):  # budgets cannot be checked: fail closed
        error = BudgetUnavailableError(f"the NullSpend server cannot be reached: {error}")
    assert isinstance(error, ApiError)
    return raise_as(error)


def _reserve_options(metered: Metered, scope: Scope) -> dict[str, Any]:
    options = {**scope.options(), "provider": metered.wire.provider}
    if metered.model:
        options["model"] = metered.model
    return options


def _forwarded(request: httpx.Request, metered: Metered) -> httpx.Request:
    """``request`` as it is sent: with ``metered``'s body, and a stream asked for unencoded
    (httpx asks for gzip, which Anthropic and many gateways apply to event streams too): its
    usage is read from the bytes as they arrive."""
    dropped = ("content-length", "accept-encoding") if metered.streamed else ("content-length",)
    headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in dropped]
    if metered.streamed:
        headers.append(("Accept-Encoding", "identity"))
    return type(request)(  # httpx's or httpx2's
        request.method,
        request.url,
        headers=headers,
        content=metered.body,
        extensions=request.extensions,
    )


class _Sending:
    """Whether a request began to be sent, as httpcore traces it (from ``extensions``, the
    forwarded request's, which httpx hands to httpcore as they are; a trace the caller set is
    still called): one cancelled before (waiting for a pooled connection, connecting) never
    reached the provider."""

    started = False

    def __init__(self, extensions: dict[str, Any]) -> None:
        self.extensions = extensions
        self.traced = extensions.get("trace")
        extensions["trace"] = self.trace

    async def trace(self, event: str, info: dict[str, Any]) -> None:
        # Through an HTTPS proxy, a CONNECT to the proxy carries these extensions first.
        sent = info.get("request")
        if event.endswith(".send_request_headers.started") and (
            sent is None or sent.method != b"CONNECT"
        ):
            self.started = True
            # Known: httpcore, which reads the trace per step, need not call this one again.
            self.extensions["trace"] = self.traced
        if self.traced is not None:
            await self.traced(event, info)


def _read(stream: Any) -> bytes:
    """A transport's answer, read whole and closed (its connection goes back to the pool)."""
    try:
        return b"".join(stream)
    finally:
        stream.close()


async def _aread(stream: Any) -> bytes:
    try:
        return b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()


def _is_stream(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.startswith("text/event-stream")


class _Metering:
    """What both transports share: which requests they meter, refuse or pass on as they are;
    and the settle (or release), off the caller's path: the client's ``settle_later`` queues
    it, so the answer never waits on NullSpend."""

    ns: NullSpend | AsyncNullSpend
    routes: Routes
    raise_as: RaiseAs
    allow_unmetered: bool
    http: ModuleType

    def _metered(self, request: httpx.Request, body: bytes) -> Metered | None:
        """The metering of ``request``; None to pass it on unmetered, because it costs nothing
        or because the client was built to allow it. Refused: one that may spend unpriced."""
        method, path = request.method, request.url.path
        metered = Metered.for_request(self.routes, method, path, body)
        if (
            metered is None
            and not self.allow_unmetered
            and spends_unpriced(self.routes, method, path)
        ):
            raise self.raise_as(unmetered_route_error(f"{method} {path}", path))
        return metered

    def _settle(self, metered: Metered, reading: Reading) -> None:
        self.ns.settle_later(metered.reservation_id, **metered.settlement(reading))

    def _settle_answer(self, metered: Metered, response: httpx.Response, content: bytes) -> None:
        """Settle an answer read whole (``content``, as it came), and give ``response`` the
        bytes again: it is handed on unclosed, for the client to time as it is read."""
        response.stream = self.http.ByteStream(content)
        if "content-encoding" in response.headers:  # decoded apart: the caller's client decodes
            try:
                content = self.http.Response(200, headers=response.headers, content=content).content
            except self.http.DecodingError:  # no answer, which the caller's client will say
                content = b""
        self._settle(metered, metered.reading_of(content))

    def _release(self, metered: Metered) -> None:
        self.ns.release_later(metered.reservation_id)

    def _end_failed(self, metered: Metered, error: BaseException, sent: bool = True) -> None:
        """A request that failed: released if the provider never had it (``sent``: it began to
        be sent, or may have), else charged its estimate (the provider goes on without the
        client, and bills), as the proxy charges a call its client left."""
        if sent and may_have_been_taken(error):
            self._settle(metered, NO_READING)
        else:
            self._release(metered)

    def _renewal(self, metered: Metered) -> Renewal:
        return Renewal(self.ns, metered.reservation_id, metered.started)


class TrackedTransport(_Metering, httpx.BaseTransport):
    ns: NullSpend

    def __init__(
        self,
        ns: NullSpend,
        inner: httpx.BaseTransport,  # or httpx2's: the same interface
        routes: Routes,
        raise_as: RaiseAs,
        http: ModuleType = httpx,
        *,
        allow_unmetered: bool = False,
    ) -> None:
        self.ns = ns
        self.routes = routes
        self.inner = inner
        self.raise_as = raise_as
        self.allow_unmetered = allow_unmetered
        self.http = http
        self.stream_type = _stream_type(_MeteredStream, http.SyncByteStream)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        metered = self._metered(request, request.read())
        if metered is None:
            return self.inner.handle_request(request)
        try:
            metered.reservation_id = self.ns.reserve_id(
                metered.estimate_microdollars, **_reserve_options(metered, self.ns.scope)
            )
        except NullSpendError as error:
            raise refusal(error, self.raise_as) from None
        try:
            response = self.inner.handle_request(_forwarded(request, metered))
        except BaseException as error:
            self._end_failed(metered, error)
            raise
        if response.status_code >= 300:  # the provider refused: nothing was spent
            self._release(metered)
        elif _is_stream(response):
            response.stream = self.stream_type(
                response, self.http, metered, self._settle, self._renewal(metered)
            )
        else:
            try:
                content = _read(response.stream)
            except BaseException:  # the provider answered: it bills, whatever reached us
                self._settle(metered, NO_READING)
                raise
            self._settle_answer(metered, response, content)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncTrackedTransport(_Metering, httpx.AsyncBaseTransport):
    ns: AsyncNullSpend

    def __init__(
        self,
        ns: AsyncNullSpend,
        inner: httpx.AsyncBaseTransport,  # or httpx2's
        routes: Routes,
        raise_as: RaiseAs,
        http: ModuleType = httpx,
        *,
        allow_unmetered: bool = False,
    ) -> None:
        self.ns = ns
        self.routes = routes
        self.inner = inner
        self.raise_as = raise_as
        self.allow_unmetered = allow_unmetered
        self.http = http
        self.stream_type = _stream_type(_AsyncMeteredStream, http.AsyncByteStream)
        # httpcore's trace tells when a request began to be sent; another transport's, nothing.
        self.traces_sending = isinstance(inner, http.AsyncHTTPTransport)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        metered = self._metered(request, await request.aread())
        if metered is None:
            return await self.inner.handle_async_request(request)
        try:
            metered.reservation_id = await self.ns.reserve_id(
                metered.estimate_microdollars, **_reserve_options(metered, self.ns.scope)
            )
        except NullSpendError as error:
            raise refusal(error, self.raise_as) from None
        forwarded = _forwarded(request, metered)
        sending = _Sending(forwarded.extensions) if self.traces_sending else None
        try:
            response = await self.inner.handle_async_request(forwarded)
        except BaseException as error:  # a cancellation, say, while waiting for a connection
            self._end_failed(metered, error, sending is None or sending.started)
            raise
        if response.status_code >= 300:
            self._release(metered)
        elif _is_stream(response):
            response.stream = self.stream_type(
                response, self.http, metered, self._settle, self._renewal(metered)
            )
        else:
            try:
                content = await _aread(response.stream)
            except BaseException:
                self._settle(metered, NO_READING)
                raise
            self._settle_answer(metered, response, content)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _settle_with_what_was_read(
    metered: Metered, accumulator: StreamAccumulator, settle: Settle
) -> None:
    settle(metered, accumulator.finish())


class _StreamReading:
    """What both metered streams do per chunk: usage read on the side (first: the caller may
    stop reading at [DONE], which can share this chunk), the reservation renewed when due (a
    stream may outlast its lifetime), then the bytes to pass on; and the settle, once: when the
    stream is closed, or when it is dropped unclosed."""

    def __init__(
        self,
        response: httpx.Response,
        http: ModuleType,
        metered: Metered,
        settle: Settle,
        renewal: Renewal,
    ):
        self.inner: Any = response.stream
        self.decoding = "content-encoding" in response.headers
        if self.decoding:
            # Encoded though identity was asked (a gateway's doing): decoded by httpx's own
            # decoders for the usage reader and the filter, and passed on decoded, as the
            # caller's client would have read it.
            self.inner = http.Response(
                response.status_code, headers=response.headers, stream=response.stream
            )
            del response.headers["content-encoding"]
            response.headers.pop("content-length", None)
        self.metered = metered
        self.settle = settle
        self.renewal = renewal
        self.accumulator = metered.wire.stream()
        self.chunk_filter = metered.stream_filter()
        # The SDKs close a stream only from the generator that reads it: one never read (or
        # left half read) would hold its reservation until it expired. Its garbage collection
        # settles it instead, from a thread of its own: the collection can start inside any
        # lock its thread holds (the embedded engine's, the settle queue's), which the settle
        # takes too. The finaliser holds what it settles with, never the stream.
        self.on_drop = weakref.finalize(
            self,
            _thread.start_new_thread,
            _settle_with_what_was_read,
            (metered, self.accumulator, settle),
        )
        self.on_drop.atexit = False  # at exit an unclosed stream's reservation expires

    def pass_on(self, chunk: bytes) -> bytes:
        self.accumulator.feed(chunk)
        self.renewal.heard()
        return self.chunk_filter.feed(chunk) if self.chunk_filter else chunk

    def rest(self) -> bytes:
        return self.chunk_filter.finish() if self.chunk_filter else b""

    def settle_now(self) -> None:
        """Settle with what was read, unless it is settled already."""
        if self.on_drop.detach() is not None:
            _settle_with_what_was_read(self.metered, self.accumulator, self.settle)


class _MeteredStream(_StreamReading):
    """The provider's stream, passed on as it arrives, usage read on the side; settled once,
    when it ends, the caller closes it or drops it (with what usage was seen, else the
    estimate)."""

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner.iter_bytes() if self.decoding else self.inner:
            if out := self.pass_on(chunk):
                yield out
        if rest := self.rest():
            yield rest

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self.settle_now()


class _AsyncMeteredStream(_StreamReading):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner.aiter_bytes() if self.decoding else self.inner:
            if out := self.pass_on(chunk):
                yield out
        if rest := self.rest():
            yield rest

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self.settle_now()


@cache
def _stream_type(metered: type[Any], base: type[Any]) -> Any:
    """``metered`` as a byte stream of ``base``'s module (httpx or httpx2)."""
    return type(metered.__name__, (metered, base), {})
