"""``instrument()``: every LlamaIndex LLM call (chat, complete, streamed or not, sync or async)
reserved before it is made and settled from what it reports.

Two halves, because LlamaIndex's instrumentation dispatcher swallows its handlers' exceptions:
a gate around each LLM class's call methods reserves first and lets a denial raise (classes
defined before ``instrument()`` are wrapped then, later ones as they are defined); an event
handler on the root dispatcher notes each call's end event (``LLMChatEndEvent``,
``LLMCompletionEndEvent``), whose response carries the provider's raw answer and usage, and the
gate settles once the call returns. The two meet through a context variable: the end event fires
inside the gated call (or inside the stream's last step). With a server, settles go from the
client's background thread, and in async code the reservation is made from a worker thread:
the event loop never waits on NullSpend's HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import functools
import inspect
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.llm import LLMChatEndEvent, LLMCompletionEndEvent

from nullspend.client import NullSpend
from nullspend.client.renewal import Renewal
from nullspend.connect import connect
from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend.errors import ApiError, ConnectionFailedError
from nullspend.pricing import default_catalog, estimate_call
from nullspend.pricing.estimate import estimate_input_tokens
from nullspend.tracked.metering import Scope, may_have_been_taken, settlement
from nullspend.tracked.providers import as_openai_error
from nullspend.tracked.transport import refusal
from nullspend.wire import (
    ANTHROPIC_MESSAGES,
    NO_READING,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    Reading,
    StreamAccumulator,
    WireFormat,
)
from nullspend.wire.media import Media, media_of
from nullspend.wire.pdf import is_pdf

S = TypeVar("S", Iterator[Any], AsyncIterator[Any])
R = TypeVar("R")

# Gated only on Anthropic's classes, which answer them with their client's parse: the others
# stream them through stream_chat, gated on its own (an OpenAI stream asked for its usage).
_PROVIDERS_OWN = ("stream_structured_predict", "astream_structured_predict")
_METHODS = (
    "chat",
    "stream_chat",
    "achat",
    "astream_chat",
    "complete",
    "stream_complete",
    "acomplete",
    "astream_complete",
    # OpenAIResponses and Anthropic answer these with their client's parse, not through chat.
    "structured_predict",
    "astructured_predict",
    *_PROVIDERS_OWN,
)
_GATED = "__nullspend_gated__"


@dataclass
class _Call:
    """A gated call between its reservation and its settlement."""

    client: NullSpend | LocalNullSpend
    reservation_id: str
    estimate_microdollars: int
    model: str | None
    wire: WireFormat
    started: float
    options: dict[str, Any]
    """What it was reserved under (attribution, model, provider): a further attempt's too."""
    raw: Any = None
    """The provider's answer, from the call's end event (None: settled at the estimate)."""
    done: bool = False
    stepped: bool = False
    """A stream's first step was taken: llama-index-llms-openai sends a stream's request only
    then."""
    sent: bool = False
    """The provider accepted the request (heard from its client: Anthropic's, which LlamaIndex
    calls before a stream's first step): dropped or broken from now on, it was billed."""
    heard: StreamAccumulator | None = None
    """A stream's events as the provider's client gave them (Anthropic's): the input side is
    only in ``message_start``, which no LlamaIndex step carries."""
    hides_usage_chunk: bool = False
    """An OpenAI stream the gate asked for its usage: the chunk that carries it is not passed
    on, so the caller sees the stream it asked for."""
    covering: bool = False
    """A gated call made inside this one is in flight, covered by this one's reservation."""
    left: bool = False
    """Its last attempt was left by the client once the provider may have taken it (a read
    timeout): charged, so the next attempt (the SDK's retry, or LlamaIndex's) reserves anew."""

    def settle(self) -> None:
        if self.done:
            return
        self.done = True
        reading = self.heard.finish() if self.heard is not None else _reading(self.wire, self.raw)
        options = settlement(
            reading or NO_READING,
            estimate_microdollars=self.estimate_microdollars,
            model=self.model,
            provider=self.wire.provider,
            started=self.started,
        )
        self.client.settle_later(self.reservation_id, **options)

    def release(self) -> None:
        if self.done:
            return
        self.done = True
        self.client.release_later(self.reservation_id)

    def learn_provider(self, inner: Any) -> None:
        """A gated call made inside this one (a user's router or fallback LLM calling the
        provider's), when neither names a model the catalog knows (a provider's call of a
        priced model is reserved on its own: ``_around``): its provider's answer is this
        call's, read in that provider's fields, under its model's name."""
        if _priced(self.model):
            return
        if model := _model_of(inner := _provider_llm(inner)):
            self.model, self.wire = model, _wire_of(inner)
            _hear_clients(inner, self.wire)

    def attempt_left(self) -> None:
        """An attempt the client gave up on once the provider may have taken it was billed:
        charged its estimate now, as the proxy charges a call its client left."""
        if not self.done:
            self.settle()
            self.left = True

    def reserve_again(self) -> str:
        """A reservation for the attempt after one left, or the typed denial, raised as the
        openai SDK's error too: its retry loop lets that through (any other it retries)."""
        try:
            return self.client.reserve_id(self.estimate_microdollars, **self.options)
        except (ApiError, ConnectionFailedError) as error:
            raise refusal(error, as_openai_error) from None

    def attempting(self, reservation_id: str) -> None:
        """The attempt after one left holds ``reservation_id``."""
        self.reservation_id, self.started = reservation_id, time.perf_counter()
        self.done = self.left = False

    def renewal(self) -> Renewal:
        return Renewal(self.client, self.reservation_id, self.started)

    @property
    def answered(self) -> bool:
        """The provider accepted the request or answered it: it bills the call."""
        return self.sent or self.raw is not None

    def end_on_error(self, error: BaseException) -> None:
        """An error after the provider's answer came (a structured answer that failed to
        parse) was billed: settled from that answer, or at the estimate. So was one after the
        provider may have taken the request (a cancellation, a read timeout): at the estimate,
        as the proxy charges a call its client left. Before it: released."""
        self.end_broken(False, error)

    def end_if_never_stepped(self) -> None:
        """A stream dropped before its first step: released if its request was never sent,
        else charged what it answered, or its estimate. (One dropped later is ended by its own
        generator.)"""
        if not self.stepped:
            self.settle() if self.answered else self.release()

    def end_broken(self, received: bool, error: BaseException) -> None:
        """A stream stopped or failed: released if nothing came yet and its request may not
        have gone out, else settled from what was heard, or at the estimate (a stream broken or
        cancelled before its first chunk, once the provider may have taken it). An attempt the
        client left was settled as it failed (``attempt_left``)."""
        taken = received or self.answered or may_have_been_taken(error)
        self.settle() if taken else self.release()

    def hear(self, event: Any) -> None:
        """One event of the provider's stream: the two that carry usage are read."""
        kind = getattr(event, "type", None)
        if self.heard is None or kind not in ("message_start", "message_delta"):
            return
        try:
            self.heard.feed(f"event: {kind}\ndata: {event.model_dump_json()}\n\n".encode())
        except (ValueError, TypeError, AttributeError):  # unreadable: charged its estimate
            self.heard = _Unread()


class _Unread:
    """A stream whose usage events could not be read: charged its estimate."""

    def feed(self, chunk: bytes) -> None:
        pass

    def finish(self) -> Reading:
        return NO_READING


_current: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "nullspend_llamaindex_call", default=None
)
_covered_by: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "nullspend_llamaindex_covered_by", default=None
)
"""The call whose reservation covers the gated call running here (and the calls it makes)."""
_covering_lock = threading.Lock()


@dataclass
class Instrumentation:
    """What ``instrument()`` set up: the client calls are held to, and their attribution."""

    client: NullSpend | LocalNullSpend
    scope: Scope


_active: Instrumentation | None = None


def instrument(
    api_key: str | None = None,
    base_url: str | None = None,
    *,
    customer: str | None = None,
    session_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    budgets: tuple[LocalBudget, ...] = (),
    path: str | Path | None = None,
    client: NullSpend | LocalNullSpend | None = None,
) -> Instrumentation:
    """Price, attribute and cap every LlamaIndex LLM call from now on, whenever its LLM object
    was made. Server mode with ``api_key``/``base_url`` (or ``NULLSPEND_API_KEY`` and
    ``NULLSPEND_BASE_URL``), else embedded with ``budgets``, spend kept in memory or in the
    SQLite file at ``path`` (see ``nullspend.embedded``). Calling it again replaces the
    settings."""
    global _active
    if client is None:
        client = connect(api_key, base_url, budgets=budgets, path=path)
    first = _active is None
    # On top of the client's own scope: a scoped client (ns.customer("acme")) scopes every call.
    _active = Instrumentation(client, client.scope.narrowed(customer, session_id, tags))
    if first:
        for cls in _subclasses(BaseLLM):
            _gate_class(cls)
        _hook_new_classes()
        get_dispatcher().add_event_handler(_Settler())
    return _active


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    pending: list[type] = [cls]
    while pending:
        subclasses: list[type] = pending.pop().__subclasses__()
        found += subclasses
        pending += subclasses
    return found


def _hook_new_classes() -> None:
    """Gate LLM classes defined from now on, as pydantic finishes building them."""
    original = BaseLLM.__pydantic_init_subclass__.__func__  # type: ignore[attr-defined]

    def hook(cls: type[BaseLLM], /, **kwargs: Any) -> None:
        original(cls, **kwargs)
        _gate_class(cls)

    BaseLLM.__pydantic_init_subclass__ = classmethod(hook)  # type: ignore[assignment,method-assign]


def _gate_class(cls: type) -> None:
    if any(base.__module__ == "llama_index.core.llms.mock" for base in cls.__mro__):
        return  # MockLLM (what Settings.llm = None makes) calls no provider: it costs nothing
    for name in _METHODS:
        method = cls.__dict__.get(name)
        if method is None or getattr(method, _GATED, False) or not callable(method):
            continue
        if name in _PROVIDERS_OWN and not _speaks_anthropic(cls):
            continue
        setattr(cls, name, _gated(method, name))


def _gated(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def gated_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            if (around := _around(self)) is not None:
                with _covered(around):
                    return await method(self, *args, **kwargs)
            call = await _reserve_off_loop(self, name, args, kwargs)
            if call is None:
                return await method(self, *args, **kwargs)
            token = _current.set(call)
            try:
                result = await method(self, *args, **_asking_for_usage(self, name, call, kwargs))
            except BaseException as error:
                call.end_on_error(error)
                raise
            finally:
                _current.reset(token)
            if name.startswith("astream"):
                return _watched(_async_stream(result, call), call)
            call.settle()
            return result

        setattr(gated_async, _GATED, True)
        return gated_async

    @functools.wraps(method)
    def gated(self: Any, *args: Any, **kwargs: Any) -> Any:
        if (around := _around(self)) is not None:
            with _covered(around):
                return method(self, *args, **kwargs)
        call = _reserve(self, name, args, kwargs)
        if call is None:
            return method(self, *args, **kwargs)
        token = _current.set(call)
        try:
            result = method(self, *args, **_asking_for_usage(self, name, call, kwargs))
        except BaseException as error:
            call.end_on_error(error)
            raise
        finally:
            _current.reset(token)
        if name.startswith("stream"):
            return _watched(_stream(result, call), call)
        call.settle()
        return result

    setattr(gated, _GATED, True)
    return gated


def _around(llm: Any) -> _Call | None:
    """The gated call this one is made in, still waiting for its answer, whose reservation
    covers it (``complete`` calling ``chat``, a wrapper its LLM, a router its provider's), or
    None. A call made while that one already covers another, and not from inside it (a user's
    LLM calling several at once: ``asyncio.gather``), is a provider call of its own, reserved
    on its own: covered, all but the first answer went unrecorded."""
    around = _current.get()
    if around is None or around.raw is not None or _active is None:
        return None
    with _covering_lock:
        if around.done or (around.covering and _covered_by.get() is not around):
            return None
        if not _priced(around.model) and _priced(_model_of(_provider_llm(llm))):
            # A user's LLM naming no model the catalog knows (a router, a fallback) reserved
            # the unpriced placeholder, $1, which the provider's call it reaches may exceed (an
            # o1 call reserving $6 went through a $1.50 cap, and spent $1.80): that is given
            # back, and the provider's call reserved and recorded on its own.
            around.release()
            return None
        around.covering = True
    around.learn_provider(llm)
    return around


@contextlib.contextmanager
def _covered(around: _Call) -> Iterator[None]:
    token = _covered_by.set(around)
    try:
        yield
    finally:
        _covered_by.reset(token)
        around.covering = False


def _watched(stream: S, call: _Call) -> S:
    """``stream``, its reservation released if it is dropped unstarted (its body never runs)."""
    weakref.finalize(stream, call.end_if_never_stepped)
    return stream


def _stream(responses: Iterator[Any], call: _Call) -> Iterator[Any]:
    """The stream as produced, each step run with the call current (its end event fires in
    the last one), its reservation renewed while steps come (it may outlast its TTL), settled
    when it ends. Stopped or failed: released if nothing came yet, else settled at the estimate
    (tokens were spent)."""
    call.stepped = True
    renewal: Renewal | None = None  # made at the first chunk: its attempt holds the reservation
    try:
        while True:
            token = _current.set(call)
            try:
                response = next(responses)
            except StopIteration:
                break
            finally:
                _current.reset(token)
            renewal = renewal or call.renewal()
            if not call.done:  # a router's, given back for its provider's call: not renewed
                renewal.heard()
            if not (call.hides_usage_chunk and _only_usage(response)):
                yield response
    except BaseException as error:
        call.end_broken(renewal is not None, error)
        raise
    call.settle()


async def _async_stream(responses: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    call.stepped = True
    renewal: Renewal | None = None  # made at the first chunk: its attempt holds the reservation
    try:
        while True:
            token = _current.set(call)
            try:
                response = await responses.__anext__()
            except StopAsyncIteration:
                break
            finally:
                _current.reset(token)
            renewal = renewal or call.renewal()
            if not call.done:  # a router's, given back for its provider's call: not renewed
                renewal.heard()
            if not (call.hides_usage_chunk and _only_usage(response)):
                yield response
    except BaseException as error:
        call.end_broken(renewal is not None, error)
        raise
    call.settle()


def _asking_for_usage(llm: Any, name: str, call: _Call, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's keyword arguments, with an OpenAI stream asked for its usage (its last chunk)
    unless the caller set ``stream_options`` already: without it the provider reports none, and
    the call could only be charged its estimate, often many times its cost."""
    llm = _provider_llm(llm)  # a wrapper (as_structured_llm) passes its kwargs on to it
    if "stream" not in name or not _is_openai(llm):
        return kwargs
    if "stream_options" in kwargs or "stream_options" in (llm.additional_kwargs or {}):
        return kwargs
    call.hides_usage_chunk = True
    return {**kwargs, "stream_options": {"include_usage": True}}


def _is_openai(llm: Any) -> bool:
    """llama-index-llms-openai's ``OpenAI`` (and its subclasses, ``OpenAILike`` and Azure's),
    whose requests take ``stream_options``; other LLMs may reject it."""
    module = sys.modules.get("llama_index.llms.openai")
    return module is not None and isinstance(llm, module.OpenAI)


def _only_usage(response: Any) -> bool:
    """The step LlamaIndex makes of the usage chunk: no choices, only usage."""
    raw = getattr(response, "raw", None)
    return getattr(raw, "choices", None) == [] and getattr(raw, "usage", None) is not None


async def _reserve_off_loop(
    llm: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> _Call | None:
    """``_reserve``, off the event loop (``_off_loop``)."""
    if _active is None:
        return None
    reserve = functools.partial(_reserve, llm, name, args, kwargs)
    return await _off_loop(_active.client, reserve, _Call.release)


async def _off_loop(
    client: NullSpend | LocalNullSpend,
    reserve: Callable[[], R | None],
    release: Callable[[R], None],
) -> R | None:
    """``reserve()``, in a worker thread when it talks to a server: the event loop never waits
    on NullSpend's HTTP. The embedded engine is a few microseconds of Python: run in place."""
    if isinstance(client, LocalNullSpend):
        return reserve()
    handoff = _Handoff(release)
    try:
        return await asyncio.to_thread(handoff.reserve, reserve)
    except asyncio.CancelledError:
        handoff.abandon()
        raise


class _Handoff(Generic[R]):
    """A reservation made in a worker thread for a caller that may be cancelled meanwhile (a
    timeout around the call): the thread goes on, and the reservation it makes is released
    rather than held, unused, for its hour. Whichever side comes second releases it."""

    def __init__(self, release: Callable[[R], None]) -> None:
        self._lock = threading.Lock()
        self._abandoned = False
        self._made: R | None = None
        self._release = release

    def reserve(self, reserve: Callable[[], R | None]) -> R | None:
        made = reserve()
        with self._lock:
            self._made = made
            abandoned = self._abandoned
        if abandoned and made is not None:
            self._release(made)
        return made

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            made = self._made
        if made is not None:
            self._release(made)


def _reserve(llm: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Call | None:
    """Reserve the call's estimate, or raise the typed denial (None when not instrumented). A
    call not covered by one it is made in (``_around``) is: a second provider call inside one
    that was answered (a structured program trying again) too."""
    if _active is None:
        return None
    provider_llm = _provider_llm(llm)
    wrapper = provider_llm is not llm  # as_structured_llm: its calls are structured_predict's
    llm = provider_llm
    model = _model_of(llm)
    wire = _wire_of(llm)
    # What the estimate counts: the prompt (and the files its blocks name by path, which go
    # out inline), and the tools' schemas (billed as input too).
    structured = name.endswith("structured_predict")
    if structured:
        text, prompt = _structured_prompt(args, kwargs)
    else:
        prompt = args[0] if args else kwargs.get("messages", kwargs.get("prompt"))
        text = str(prompt or "")
    if given := kwargs.get("tools"):
        text += json.dumps(given, default=str)
    own = getattr(llm, "additional_kwargs", None) or {}
    sent = _as_sent(llm, wire, own, kwargs)
    cap = wire.requested_output_cap(sent)
    if wire is OPENAI_RESPONSES:  # its instructions go out with every request, billed as input
        instructions = sent.get("instructions", getattr(llm, "instructions", None))
        text += instructions if isinstance(instructions, str) else ""
    if structured or wrapper:
        # Structured output is asked for with the client's parse, sent llm_kwargs (a wrapper's
        # call passes its keyword arguments on as those), not the LLM's own output cap.
        llm_kwargs = (args[2] if len(args) > 2 else kwargs.get("llm_kwargs")) if structured else {}
        llm_kwargs = llm_kwargs if isinstance(llm_kwargs, Mapping) else {}
        sent.update(llm_kwargs)
        asked = {**own, **kwargs, **llm_kwargs}
        if wire is ANTHROPIC_MESSAGES:  # asks for 8,192 tokens unless they say
            cap = max(cap or 0, asked.get("max_tokens", 8192))
        elif wire is OPENAI_RESPONSES:  # asks for no cap unless they say: the model's own
            cap = asked.get("max_output_tokens")
    # OpenAIResponses that tracks its previous responses (or is given previous_response_id or
    # conversation) continues a stored conversation: billed for the earlier turns it does not
    # send.
    stored = wire is OPENAI_RESPONSES and wire.continues_stored_context(
        {"previous_response_id": getattr(llm, "_previous_response_id", None), **sent}
    )
    request = {**sent, "tools": _tool_specs(llm, sent)}
    media, files_size = _blocks(prompt)
    estimate = estimate_call(
        model,
        # Anthropic bills a system prompt of its own for a call that sends tools.
        estimate_input_tokens(text.encode())
        + -(-files_size // 3)
        + wire.hidden_input_tokens(request),
        cap if isinstance(cap, int) else None,
        media=media,
        choices=wire.requested_choices(sent),  # OpenAI's n: each completion is billed
        stored_context=stored,
        cache_ttl=_cache_ttl(llm, prompt, request) if wire is ANTHROPIC_MESSAGES else None,
        service_tier=wire.requested_service_tier(sent),  # OpenAI's priority costs more
        # OpenAIResponses' built-in tools (a web search: billed per search) are its own field.
        web_searches=wire.requested_web_searches(request),
        audio_output=wire.requests_audio_output(sent),  # speech bills above text
        side_calls=wire.requested_side_calls(request),  # Claude's compaction, advisor calls
    )
    options = {**_active.scope.options(), "model": model or "unknown", "provider": wire.provider}
    _hear_clients(llm, wire)  # before reserving: nothing may come between it and the call
    reservation_id = _active.client.reserve_id(estimate.microdollars, **options)
    return _Call(
        _active.client,
        reservation_id,
        estimate.microdollars,
        model,
        wire,
        time.perf_counter(),
        options,
    )


def _hear_clients(llm: Any, wire: WireFormat) -> None:
    """Wrap (once each) the provider client calls whose answers reach no LlamaIndex event, to
    hand them to the gated call they run in, as end events do:
    - ``structured_predict`` (its own, or ``as_structured_llm``'s) is answered by the client's
      ``parse``: ``responses.parse`` (OpenAIResponses), ``beta.messages.parse`` (Anthropic);
    - an Anthropic stream's input side is only in its ``message_start`` event, which no step
      LlamaIndex makes carries; and its request is sent before the stream's first step.
    - each attempt the openai SDK sends (``_attempts``).
    Outside a gated call the wrappers only pass the answer on."""
    base = sys.modules.get("openai._base_client")
    for sdk_client in (getattr(base, "SyncAPIClient", None), getattr(base, "AsyncAPIClient", None)):
        _attempts(sdk_client)
    for client in (getattr(llm, "_client", None), getattr(llm, "_aclient", None)):
        if wire is OPENAI_RESPONSES:
            _wrap(getattr(client, "responses", None), "parse", _answered, _note_failure)
        elif wire is ANTHROPIC_MESSAGES:
            parsed = getattr(getattr(client, "beta", None), "messages", None)
            _wrap(parsed, "parse", _answered, _note_failure)
            _wrap(getattr(client, "messages", None), "create", _created, _note_failure)


def _attempts(sdk_client: Any) -> None:
    """Wrap (once) the openai SDK client's ``_send_request``, which sends each attempt at a
    call (retried by the SDK, then by LlamaIndex: ``max_retries``): one the provider may have
    taken and the client gave up on (a read timeout) is billed, charged its estimate as it
    fails, and the attempt after it is reserved on its own, or denied before it is sent (each
    held to the cap, as the tracked clients hold each attempt)."""
    send = getattr(sdk_client, "_send_request", None)
    if send is None or getattr(send, _GATED, False):
        return
    if inspect.iscoroutinefunction(send):

        async def attempt_async(*args: Any, **kwargs: Any) -> Any:
            if (call := _current.get()) is not None and call.left:
                release = call.client.release_later
                reservation = await _off_loop(call.client, call.reserve_again, release)
                if reservation is not None:  # always: a denial raises
                    call.attempting(reservation)
            try:
                return await send(*args, **kwargs)
            except Exception as error:
                _attempt_failed(error)
                raise

        attempt: Callable[..., Any] = attempt_async
    else:

        def attempt(*args: Any, **kwargs: Any) -> Any:
            if (call := _current.get()) is not None and call.left:
                call.attempting(call.reserve_again())
            try:
                return send(*args, **kwargs)
            except Exception as error:
                _attempt_failed(error)
                raise

    setattr(attempt, _GATED, True)
    sdk_client._send_request = attempt


def _wrap(
    resource: Any,
    name: str,
    then: Callable[[Any, Mapping[str, Any]], Any],
    failed: Callable[[Exception], None],
) -> None:
    """``resource.name``, answering ``then(answer, its keyword arguments)``, telling ``failed``
    of an error; an async client's method answers an awaitable (not always from an ``async
    def``: a wrapper's)."""
    method = getattr(resource, name, None)
    if method is None or getattr(method, _GATED, False):
        return

    def heard(*args: Any, **kwargs: Any) -> Any:
        try:
            answer = method(*args, **kwargs)
        except Exception as error:
            failed(error)
            raise
        if inspect.isawaitable(answer):
            return _then_awaited(answer, kwargs, then, failed)
        return then(answer, kwargs)

    setattr(heard, _GATED, True)
    setattr(resource, name, heard)


async def _then_awaited(
    answer: Awaitable[Any],
    kwargs: Mapping[str, Any],
    then: Callable[[Any, Mapping[str, Any]], Any],
    failed: Callable[[Exception], None],
) -> Any:
    try:
        answered = await answer
    except Exception as error:
        failed(error)
        raise
    return then(answered, kwargs)


def _note_failure(error: Exception) -> None:
    """A client call that failed reading its answer had it, and the provider billed it: a
    structured answer that does not parse (pydantic's or JSON's ``ValueError``), or one the
    SDK refuses for its finish (its own errors other than ``APIError``, which are a request's:
    an error status, no connection, a timeout). A ``TypeError`` (arguments it refused before
    sending) was not."""
    call = _current.get()
    if call is None:
        return
    sdks = [module for name in ("openai", "anthropic") if (module := sys.modules.get(name))]
    sdk_errors = tuple(getattr(m, "OpenAIError", None) or m.AnthropicError for m in sdks)
    api_errors = tuple(m.APIError for m in sdks)
    if isinstance(error, (ValueError, *sdk_errors)) and not isinstance(error, api_errors):
        call.sent = True


def _attempt_failed(error: Exception) -> None:
    """One attempt's sending failed: left by the client once the provider may have taken it."""
    if (call := _current.get()) is not None and may_have_been_taken(error):
        call.attempt_left()


def _answered(answer: Any, kwargs: Mapping[str, Any]) -> Any:
    _hand_over(answer)
    return answer


def _created(answer: Any, kwargs: Mapping[str, Any]) -> Any:
    """An Anthropic request the provider accepted. A stream stays the SDK's own object (a
    context manager, an iterator, an ``anthropic.Stream``): only the iterator under it is
    replaced by one that lets the call hear each event."""
    call = _current.get()
    if call is None:
        return answer
    call.sent = True
    if not kwargs.get("stream"):
        _hand_over(answer)
        return answer
    events = getattr(answer, "_iterator", None)
    if events is None:  # an SDK of another shape: read as LlamaIndex reports it
        return answer
    call.heard = ANTHROPIC_MESSAGES.stream()
    answer._iterator = (
        _heard_async(events, call) if hasattr(events, "__anext__") else _heard(events, call)
    )
    return answer


def _heard(events: Iterator[Any], call: _Call) -> Iterator[Any]:
    for event in events:
        call.hear(event)
        yield event


async def _heard_async(events: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for event in events:
        call.hear(event)
        yield event


def _hand_over(raw: Any) -> None:
    """The provider's answer, to the gated call it came in (its first: a later one is another
    provider call's, reserved on its own)."""
    call = _current.get()
    if call is not None and raw is not None and call.raw is None:
        call.raw = raw


def _tool_specs(llm: Any, sent: Mapping[str, Any]) -> list[Any]:
    """The tools a call sends as the provider's own specs: OpenAIResponses' built-in tools,
    Anthropic's given to its constructor, and those given to the call as dicts (LlamaIndex's
    tool objects are not the provider's)."""
    specs: list[Any] = []
    for own in (getattr(llm, "built_in_tools", None), getattr(llm, "tools", None)):
        if isinstance(own, list):
            specs += own
    given = sent.get("tools")
    return specs + given if isinstance(given, list) else specs


def _blocks(prompt: Any) -> tuple[Media | None, int]:
    """What a prompt's blocks hold that its text does not show as billed (``wire.media``): its
    images (billed by their pixels, not by the bytes a block prints as), its PDFs (billed by
    their pages) and the documents and audio it names by URL (billed by their content); and the
    bytes the files it names by path (a document, audio, video) go out as, base64-encoded, read
    from disk only when the call is sent (but a document's header now, to tell a PDF, and a
    PDF whole, to count its pages)."""
    media, size = Media(), 0
    for message in _messages(prompt):
        for block in getattr(message, "blocks", ()):
            kind = getattr(block, "block_type", None)
            path = getattr(block, "path", None)
            if kind == "document" and (pdf := _pdf_of(block)) is not None:
                # Each page billed as its text and an image of it, far above a compact PDF's
                # bytes: read as the wire reads a PDF sent inline (its pages, or else bounded
                # as a file it only names).
                sent = media_of([{"type": "document", "source": {"type": "base64", "data": pdf}}])
                media.pdf_pages += sent.pdf_pages
                media.pdf_bytes += sent.pdf_bytes
                media.named_files += sent.named_files
            if kind == "image":
                media.images += 1
                media.image_bytes += len(repr(block).encode())
            elif any(getattr(block, f, None) for f in _INLINE_FIELDS):
                continue  # its content is in the text
            elif path is not None:
                try:
                    size += -(-os.path.getsize(path) // 3) * 4
                except (OSError, TypeError, ValueError):
                    continue  # LlamaIndex will fail to read it too: the call is not sent
            elif kind == "document" or getattr(block, "url", None) is not None:
                # Named by URL: a document (Anthropic's sends the URL, OpenAI's fetches it) and
                # audio (fetched, sent inline) bill their content, which the text does not hold:
                # bounded by the model's window, as a file a request only names.
                media.named_files += 1
    return (media if media.images or media.named_files or media.pdf_pages else None), size


_INLINE_FIELDS = ("image", "data", "audio", "video")


def _pdf_of(document: Any) -> str | None:
    """A document block's PDF as it is sent, base64: its ``data`` (kept base64), or the file
    its ``path`` names, read whole once its header shows a PDF, whatever its name (LlamaIndex
    sends a ``report.PDF`` too, and Anthropic's LLMs send any document as a PDF); None for
    another kind of document, or one not readable. (``wire.pdf`` reads base64 only: the file
    is encoded to be counted.)"""
    data = getattr(document, "data", None)
    if isinstance(data, bytes):
        text = data.decode("ascii", "ignore")
        return text if is_pdf(text) else None
    path = getattr(document, "path", None)
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            # The first 1,024 bytes hold a PDF's header, as is_pdf reads it.
            if not is_pdf(base64.b64encode(file.read(1024)).decode()):
                return None
            file.seek(0)
            return base64.b64encode(file.read()).decode()
    except (OSError, TypeError, ValueError):
        return None  # LlamaIndex will fail to read it too: the call is not sent


def _cache_ttl(llm: Any, prompt: Any, request: Mapping[str, Any]) -> str | None:
    """The prompt-cache lifetime an Anthropic call asks for, read as its API reads
    ``cache_control``: the LLM's ``cache_idx`` marks messages, as do a message's own
    ``cache_control`` and a ``CachePoint`` block; the call's parameters and tools too."""
    controls: list[Any] = (
        [{"type": "ephemeral"}] if getattr(llm, "cache_idx", None) is not None else []
    )
    for message in _messages(prompt):
        extra = getattr(message, "additional_kwargs", None)
        controls.append(extra.get("cache_control") if isinstance(extra, Mapping) else None)
        controls += [
            _plain(getattr(b, "cache_control", None)) for b in getattr(message, "blocks", ())
        ]
    blocks = [{"cache_control": control} for control in controls]
    return ANTHROPIC_MESSAGES.requested_cache_ttl({**request, "messages": [{"content": blocks}]})


def _as_sent(
    llm: Any, wire: WireFormat, own: Mapping[str, Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The call's parameters as the LLM class merges them into its request: a per-call or
    ``additional_kwargs`` ``max_tokens`` (or ``n``) is what the provider is sent, and bills."""
    if wire is ANTHROPIC_MESSAGES:  # its own max_tokens, then additional_kwargs, then the call's
        return {"max_tokens": getattr(llm, "max_tokens", None), **own, **kwargs}
    if wire is OPENAI_RESPONSES:
        return {"max_output_tokens": getattr(llm, "max_output_tokens", None), **own, **kwargs}
    # llama-index-llms-openai: the call's, then its own max_tokens, then additional_kwargs, then
    # its speech settings
    cap = getattr(llm, "max_tokens", None)
    speech = {
        "modalities": getattr(llm, "modalities", None),
        "audio": getattr(llm, "audio_config", None),
    }
    return {
        **kwargs,
        **({"max_tokens": cap} if cap is not None else {}),
        **own,
        **{name: value for name, value in speech.items() if value is not None},
    }


def _provider_llm(llm: Any) -> Any:
    """The LLM that calls the provider: a wrapper's (``as_structured_llm``'s StructuredLLM)
    own, whose model, API and caps the estimate reads."""
    inner = getattr(llm, "llm", None)
    return inner if isinstance(inner, BaseLLM) else llm


def _messages(prompt: Any) -> Sequence[Any]:
    """A chat's messages (a list, or any sequence LlamaIndex takes: a tuple); none for a
    completion's prompt."""
    return prompt if isinstance(prompt, Sequence) and not isinstance(prompt, str) else ()


def _structured_prompt(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, Any]:
    """What ``structured_predict(output_cls, prompt, llm_kwargs=None, **prompt_args)`` sends:
    the prompt filled in, and the output's JSON schema; and the messages it fills in, whose
    blocks (an image to read a receipt from) bill as a chat's."""
    output_cls = args[0] if args else kwargs.get("output_cls")
    template = args[1] if len(args) > 1 else kwargs.get("prompt")
    prompt_args = {k: v for k, v in kwargs.items() if k not in _STRUCTURED_PARAMETERS}
    try:
        messages = template.format_messages(**prompt_args)  # type: ignore[union-attr]
        text = str(messages)
    except Exception:  # a template of another kind, or arguments it refuses: its text
        messages, text = None, str(template)
    schema = getattr(output_cls, "model_json_schema", None)
    return (text + json.dumps(schema()) if callable(schema) else text), messages


_STRUCTURED_PARAMETERS = frozenset({"output_cls", "prompt", "llm_kwargs"})


def _wire_of(llm: Any) -> WireFormat:
    """The API an LLM class speaks, so its answer's usage is read in that API's fields."""
    if _speaks_anthropic(type(llm)):
        return ANTHROPIC_MESSAGES
    responses = sys.modules.get("llama_index.llms.openai.responses")
    if responses is not None and isinstance(llm, responses.OpenAIResponses):
        return OPENAI_RESPONSES
    return OPENAI_CHAT


def _speaks_anthropic(cls: type) -> bool:
    """An LLM class of llama-index-llms-anthropic's, or a subclass of one."""
    return any(base.__module__.startswith("llama_index.llms.anthropic") for base in cls.__mro__)


def _priced(model: str | None) -> bool:
    return model is not None and default_catalog().resolve(model) is not None


def _model_of(llm: Any) -> str | None:
    for attribute in ("model", "model_name"):
        value = getattr(llm, attribute, None)
        if isinstance(value, str) and value:
            return value
    try:
        value = llm.metadata.model_name
    except Exception:
        return None
    return value if isinstance(value, str) and value else None


def _reading(wire: WireFormat, raw: Any) -> Reading | None:
    """Usage and model from the provider's raw answer, as LlamaIndex keeps it (the SDK's
    object, or a dict of them); None when it says nothing readable."""
    if raw is None:
        return None
    plain = _plain(raw)
    if wire is OPENAI_RESPONSES and isinstance(plain, Mapping) and "response" in plain:
        plain = plain["response"]  # a stream ends on response.completed, which carries it
    try:
        return wire.read_response(plain)
    except (ValueError, TypeError, AttributeError):
        return None


def _plain(value: Any) -> Any:
    """SDK objects (pydantic models) down to JSON-like dicts and lists."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            # A parsed answer (beta.messages.parse) holds the caller's own output model, which
            # pydantic warns of on the caller's stderr when dumped: only usage is read here.
            return dump(warnings=False)
        except TypeError:  # a model_dump of another signature
            return dump()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _Settler(BaseEventHandler):
    """Hands the current gated call the provider's answer from its end event."""

    @classmethod
    def class_name(cls) -> str:
        return "NullSpendSettler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if not isinstance(event, LLMChatEndEvent | LLMCompletionEndEvent):
            return
        _hand_over(getattr(event.response, "raw", None))
