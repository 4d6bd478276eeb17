"""One provider call as NullSpend meters it, whatever client carries it: which wire format the
request is in, what to reserve, what to change in the request (only: ask an OpenAI chat stream
for its usage), and what the answer cost. The transports only move bytes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nullspend.errors import UnmeteredRouteError
from nullspend.pricing import estimate_request, reading_cost, unrecordable
from nullspend.wire import (
    ANTHROPIC_MESSAGES,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    Reading,
    WireFormat,
    reading_of_body,
)
from nullspend.wire._json import parse_object
from nullspend.wire.usage_chunks import UsageChunkFilter, asking_for_usage

Routes = tuple[tuple[str, WireFormat], ...]
"""A provider's priced routes, by how their path ends (the base URL may carry /v1 or a gateway
prefix), never by how it starts: under /responses only creating and compacting run a model,
not .../input_tokens or .../{id}/cancel. Per provider: OpenAI's Assistants API has a free POST
.../threads/{id}/messages."""
OPENAI_ROUTES: Routes = (
    ("/chat/completions", OPENAI_CHAT),
    ("/responses", OPENAI_RESPONSES),
    # A compaction answers a CompactedResponse: a response's usage, no model (the asked one).
    ("/responses/compact", OPENAI_RESPONSES),
)
ANTHROPIC_ROUTES: Routes = (("/messages", ANTHROPIC_MESSAGES),)

_FREE_POSTS = (
    r"messages/count_tokens",
    r"responses/input_tokens",
    r"moderations",
    r"cancel|pause|archive",  # a batch, a response, a fine-tuning job (resuming one spends)
    r"chat/completions/chatcmpl-[^/]+",  # a stored completion's metadata updated
    # Storing: billed by the gigabyte-day if at all, never by the request.
    r"files",
    r"uploads(?:/[^/]+/(?:parts|complete))?",
    r"conversations(?:/[^/]+(?:/items)?)?",
    r"vector_stores(?:/[^/]+(?:/(?:files|file_batches)(?:/[^/]+)?)?)?",
    r"skills(?:/[^/]+(?:/versions)?)?",
    r"assistants(?:/[^/]+)?",
    r"threads(?:/thread_[^/]+(?:/messages(?:/[^/]+)?)?)?",  # not .../runs: a run spends
)
FREE_POSTS = re.compile(rf"/(?:{'|'.join(_FREE_POSTS)})$")
"""The POSTs, by how their path ends, that cost nothing of either provider. Any other POST
outside the priced routes may spend where NullSpend cannot price it: a batch, embeddings,
images, audio, a fine-tuning job, an assistant's run. (The administration API is refused too:
a gateway's base path could look like it.)"""


def unmetered_route_error(request: str, path: str) -> UnmeteredRouteError:
    """The refusal of ``request`` (``POST /v1/batches``, say), which may spend unpriced."""
    return UnmeteredRouteError(
        f"{request} may cost money NullSpend cannot price, so it was not sent: a budget could "
        "not hold it. Build the client with allow_unmetered=True to send such requests "
        "uncounted.",
        details={"path": path},
    )


def _wire_of(routes: Routes, path: str) -> WireFormat | None:
    return next((wire for suffix, wire in routes if path.endswith(suffix)), None)


def spends_unpriced(routes: Routes, method: str, path: str) -> bool:
    """Whether a request may cost money NullSpend cannot price: a POST neither to one of
    ``routes`` nor to one that costs nothing. Reads and deletes cost nothing."""
    return method == "POST" and _wire_of(routes, path) is None and not FREE_POSTS.search(path)


@dataclass(frozen=True)
class Scope:
    """Who a call is attributed to: customer, session and tags."""

    customer: str | None = None
    session_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The attribution options of a ``reserve`` call (those that are set)."""
        options: dict[str, Any] = {"tags": self.tags}
        if self.customer:
            options["customer"] = self.customer
        if self.session_id:
            options["session_id"] = self.session_id
        return options

    def narrowed(
        self,
        customer: str | None,
        session_id: str | None,
        tags: Mapping[str, str] | None,
    ) -> Scope:
        return Scope(
            customer or self.customer,
            session_id or self.session_id,
            {**self.tags, **(tags or {})},
        )


# httpx's (and httpx2's, httpcore's) errors raised before a request was all sent: the provider
# never had it.
_NOT_SENT = frozenset(
    {
        "ConnectError",
        "ConnectTimeout",
        "PoolTimeout",
        "ProxyError",
        "UnsupportedProtocol",
        "LocalProtocolError",
        "WriteError",
        "WriteTimeout",
        "HTTPStatusError",  # the provider answered, refusing: nothing billed
    }
)
_HTTP_MODULES = frozenset({"httpx", "httpx2", "httpcore"})


def may_have_been_taken(error: BaseException) -> bool:
    """Whether a provider call that failed with ``error`` (or an error it was raised from: a
    provider SDK's timeout wraps httpx's ``from`` it) may have been taken by the provider, which
    then goes on without the client and bills it: a cancellation, or an HTTP failure once the
    request was all sent (a read timeout, a broken answer). Not: a failure before (no
    connection, a refused write), the provider's refusal (an error status), nor any other error
    (a bad argument). Only explicit causes are followed: an error merely raised while another
    was handled (a retry refused inside ``except APITimeoutError``, an SDK's status error raised
    ``from None``) says nothing of this call."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, asyncio.CancelledError):
            return True
        if type(seen).__module__.partition(".")[0] in _HTTP_MODULES:
            return type(seen).__name__ not in _NOT_SENT
        seen = seen.__cause__
    return False


def settlement(
    reading: Reading,
    *,
    estimate_microdollars: int,
    model: str | None,
    provider: str | None,
    started: float,
) -> dict[str, Any]:
    """The settle call's options for a finished call, whichever integration made it: the exact
    cost when the answer carried usage of a priced model, else the estimate (never zero).

    Usage no call can have (counts past a BIGINT, a price past one call's most: a broken
    gateway's) is left out and the estimate charged: a settle carrying it would be refused,
    leaving the call unrecorded and its reservation held until it expired."""
    cost = reading_cost(reading, model)[1]
    model = reading.model or model
    usage = reading.billed_usage()
    if unrecordable(cost, usage):
        cost = usage = None
    options: dict[str, Any] = {
        "cost_microdollars": estimate_microdollars if cost is None else cost,
        "duration_ms": int((time.perf_counter() - started) * 1000),
    }
    if provider:
        options["provider"] = provider
    if model:
        options["model"] = model
    if usage is not None:
        options["usage"] = usage
    return options


@dataclass
class Metered:
    """A priced call between its reservation and its settlement."""

    wire: WireFormat
    model: str | None
    estimate_microdollars: int
    body: bytes
    """The request body to send: the caller's, or with ``include_usage`` added."""
    strip_usage: bool
    streamed: bool
    started: float = field(default_factory=time.perf_counter)
    reservation_id: str = ""

    @classmethod
    def for_request(cls, routes: Routes, method: str, path: str, body: bytes) -> Metered | None:
        """The metering of a POST to one of ``routes``, or None for any other request (see
        ``spends_unpriced``) and for one that is not a JSON object (the provider refuses it)."""
        wire = _wire_of(routes, path)
        if method != "POST" or wire is None:
            return None
        try:
            parsed = parse_object(body)
        except ValueError:
            return None
        asking = asking_for_usage(wire, parsed, body)
        body = asking or body
        estimate = estimate_request(wire, parsed, body)
        return cls(
            wire,
            estimate.requested_model,
            estimate.microdollars,
            body,
            asking is not None,
            parsed.get("stream") is True,
        )

    def reading_of(self, content: bytes) -> Reading:
        return reading_of_body(self.wire, content)

    def settlement(self, reading: Reading) -> dict[str, Any]:
        return settlement(
            reading,
            estimate_microdollars=self.estimate_microdollars,
            model=self.model,
            provider=self.wire.provider,
            started=self.started,
        )

    def stream_filter(self) -> UsageChunkFilter | None:
        return UsageChunkFilter() if self.strip_usage else None
