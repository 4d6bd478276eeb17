"""``NullSpendCallbackHandler``: every LangChain chat-model and LLM call reserved before it is
made (a denial raises there, before any provider request), priced from the usage it reports,
and settled; a failed call releases its reservation."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import UUID

import httpx
from langchain_core.callbacks import AsyncCallbackManager, BaseCallbackHandler
from langchain_core.language_models import BaseChatModel, BaseLLM
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.messages.ai import UsageMetadata, add_usage
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.utils.function_calling import convert_to_json_schema

from nullspend.attribution import tag_errors
from nullspend.client import NullSpend
from nullspend.client.renewal import Renewal
from nullspend.connect import connect
from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend.pricing.estimate import (
    MESSAGE_FRAMING_TOKENS,
    estimate_call,
    estimate_input_tokens,
    served_by_anthropic,
)
from nullspend.tracked.metering import may_have_been_taken, settlement
from nullspend.usage import Usage
from nullspend.wire import (
    ANTHROPIC_MESSAGES,
    NO_READING,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    Reading,
    format_of,
)
from nullspend.wire.base import SideCall
from nullspend.wire.media import media_of
from nullspend.wire.openai_responses import web_search_calls
from nullspend_langchain.usage import reading_from_metadata

CUSTOMER_KEY = "nullspend_customer"
SESSION_KEY = "nullspend_session"
_MAX_TAGS = 10
_NO_USAGE = Usage()
# What _reading answers for an answer LangChain took from its cache: no provider call was made.
_CACHE_HIT = Reading(_NO_USAGE, None)
# What a call that reported no usage is read as: it is charged its estimate.
# One encoder for every estimate: json.dumps(default=...) would build a new one per call.
_encode_json = json.JSONEncoder(default=str).encode


# The parameters that carry a structured output's schema, billed as input as a tool's is:
# ChatOpenAI's response_format (a class from with_structured_output) and the Responses API's
# text format, ChatAnthropic's output_config (and the output_format it replaced), and the
# legacy functions.
_OUTPUT_SCHEMAS = ("response_format", "text", "output_config", "output_format", "functions")


# The prompts of one multi-prompt generate(): their parent run and their invocation_params' id.
_Batch = tuple[UUID | None, int]
# How long a batch's denial (or a run's cancellation) is kept for calls still starting.
_DENIAL_KEPT = 60.0


@dataclass(slots=True)
class _Open:
    """A call between its start and its end."""

    reservation_id: str
    estimate_microdollars: int
    estimated_input_tokens: int
    model: str | None
    provider: str | None
    cache_ttl: str | None
    """The prompt-cache lifetime the call asked for: what a cache write it reports unsplit is
    priced at."""
    started: float
    batch: _Batch | None
    """For one prompt of a multi-prompt ``generate``: what its siblings share."""
    parent: UUID | None
    task: asyncio.Task[Any] | None
    """The asyncio task the call started in, when the handler runs on the event loop."""
    read_by_caller: bool = False
    """A stream the caller reads (``astream``), which may go on after its task moved on (handed
    to another task, or read while the task makes other calls); not one LangChain reads itself
    inside ``ainvoke`` (``streaming=True``, LangGraph's messages mode). Set with a task only."""
    usage_seen: UsageMetadata | None = None
    """The usage a stream's chunks reported so far, summed as LangChain sums them."""
    renewal: Renewal | None = None
    """A stream's: its reservation renewed while its tokens come (it may outlast its TTL)."""


class NullSpendCallbackHandler(BaseCallbackHandler):
    """Attach with ``config={"callbacks": [handler]}`` or a model's ``callbacks=[handler]``.

    ``api_key`` and ``base_url`` default to ``NULLSPEND_API_KEY`` and ``NULLSPEND_BASE_URL``.
    With no server at all it runs embedded: ``budgets`` declared in code, spend in memory or in
    the SQLite file at ``path`` (see ``nullspend.embedded``).
    ``customer``, ``session_id`` and ``tags`` attribute every call; a run's metadata
    ``nullspend_customer`` / ``nullspend_session`` override them per run, and the run's
    LangChain tags that are valid NullSpend tag keys are recorded too.
    """

    raise_error = True  # a denial must stop the call, not be logged and ignored

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        customer: str | None = None,
        session_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        budgets: Iterable[LocalBudget] = (),
        path: str | Path | None = None,
        client: NullSpend | LocalNullSpend | None = None,
    ) -> None:
        self.client = client or connect(api_key, base_url, budgets=budgets, path=path)
        # On top of the client's own scope: a scoped client (ns.customer("acme")) scopes it.
        self.scope = self.client.scope.narrowed(customer, session_id, tags)
        self._open: dict[UUID, _Open] = {}
        self._denied: dict[_Batch, tuple[object, Exception, float]] = {}
        # The parent of every chain and tool run still going: a call's trace is its root run.
        self._parents: dict[UUID, UUID] = {}
        self._lock = threading.Lock()  # async runs call a sync handler from executor threads
        # Tasks whose end is watched for calls LangChain will never end (see _on_task_done),
        # each with the runs started in it: what its end, or its next call, looks through.
        self._watched: dict[asyncio.Task[Any], list[UUID]] = {}
        # Runs cancelled lately, and when: a start still reserving in an executor thread
        # (server mode) may land after its run's cancellation was heard.
        self._cancelled: dict[UUID, float] = {}
        # Embedded, a callback is a few dozen microseconds of Python: run on the event loop, not
        # hopped to an executor thread. Server mode does HTTP, which must not block the loop.
        self.run_inline = isinstance(self.client, LocalNullSpend)

    # --- start: reserve --------------------------------------------------------------------

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        text = [m.content for batch in messages for m in batch]
        # ChatOpenAI keeps a tool-calling turn's arguments out of its content (""), in
        # tool_calls; billed as input all the same. (Anthropic's are content blocks: counted.)
        calls = [
            m.tool_calls
            for batch in messages
            for m in batch
            if isinstance(m, AIMessage) and m.tool_calls and isinstance(m.content, str)
        ]
        # ChatAnthropic's context_management (compaction) is not among its invocation params.
        constructed = serialized.get("kwargs") if serialized else None
        managed = constructed.get("context_management") if type(constructed) is dict else None
        self._reserve(
            run_id,
            parent_run_id,
            tags,
            metadata,
            invocation_params,
            batch_size,
            text,
            calls,
            managed,
        )

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        invocation_params: dict[str, Any] | None = None,
        batch_size: int = 1,
        **kwargs: Any,
    ) -> None:
        self._reserve(
            run_id, parent_run_id, tags, metadata, invocation_params, batch_size, list(prompts), []
        )

    def _reserve(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        run_tags: Sequence[str] | None,
        metadata: Mapping[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
        batch_size: int,
        text: list[Any],
        tool_calls: list[Any],
        context_management: Any = None,
    ) -> None:
        params = invocation_params or {}
        metadata = metadata or {}
        request = params  # the request's own fields, as the model will send them
        if (extra := params.get("model_kwargs")) and isinstance(extra, Mapping):
            # A model's model_kwargs go out as top-level fields (ChatAnthropic's cache_control,
            # say); its invocation params keep them apart.
            request = {**extra, **params}
        model = _model_of(params, metadata)
        # LangChain's invocation params name the cap as OpenAI's API does (Anthropic's too).
        cap = OPENAI_CHAT.requested_output_cap(request)
        # What the estimate counts: the prompt's text, or its JSON when it has content blocks,
        # and the tool calls and tools' schemas, which the provider bills as input too.
        blocks = False
        try:
            raw = "\n".join(text).encode()
        except TypeError:
            raw = _encode_json(text).encode()
            blocks = True
        if tool_calls:
            raw += _encode_json(tool_calls).encode()
        tools = request.get("tools")
        if tools:
            raw += _encode_json(tools).encode()
        for field in _OUTPUT_SCHEMAS:
            if schema := request.get(field):
                raw += _schema_as_sent(schema)
        # Only content blocks, tools and the call's own parameters can ask for prompt caching.
        cache_ttl = (
            _cache_ttl(text, request) if blocks or tools or "cache_control" in request else None
        )
        provider = metadata.get("ls_provider")
        if not isinstance(provider, str):
            provider = None
        # Each message's role and framing is billed too, and Anthropic adds a system prompt
        # (and its own tools' definitions) to a call that sends tools: none of it is text here.
        # Claude adds it wherever it is served (Bedrock, Vertex, a gateway): read by the model.
        input_tokens = estimate_input_tokens(raw) + MESSAGE_FRAMING_TOKENS * len(text)
        managed = context_management is not None or "context_management" in request
        by_claude = (tools or managed) and served_by_anthropic(provider, model)
        if tools and by_claude:
            input_tokens += ANTHROPIC_MESSAGES.hidden_input_tokens(request)
        estimate = estimate_call(
            model,
            input_tokens,
            cap,
            # Images are billed by their pixels and named files by their content, not by the
            # bytes their blocks take here.
            media=media_of(text) if blocks else None,
            choices=OPENAI_CHAT.requested_choices(request),
            # A Responses turn that continues a stored conversation (previous_response_id, as
            # ChatOpenAI's docs pass it) is billed for turns its messages leave out.
            stored_context=OPENAI_RESPONSES.continues_stored_context(request),
            cache_ttl=cache_ttl,  # a prompt written to the cache is billed above input
            service_tier=OPENAI_CHAT.requested_service_tier(request),  # ChatOpenAI's too
            # Bound tools in either provider's shape; a search is billed on top of tokens.
            web_searches=_web_searches_allowed(request) if tools else 0,
            audio_output=OPENAI_CHAT.requests_audio_output(request),  # speech bills above text
            # Passes Claude may run besides the call: compaction, an advisor tool's calls.
            side_calls=_side_calls(request, context_management) if by_claude else (),
        )
        trace_id = self._root(parent_run_id or run_id).hex
        run = self.scope
        if run_tags or CUSTOMER_KEY in metadata or SESSION_KEY in metadata:
            run = run.narrowed(
                metadata.get(CUSTOMER_KEY), metadata.get(SESSION_KEY), self._run_tags(run_tags)
            )
        # LangChain starts every prompt of a batch before calling the model, with the same
        # invocation_params object: a denial of one leaves the others started, never ended.
        # In async code a sync handler's starts run in executor threads, all at once: a sibling
        # may still be reserving when another is denied, so the denial is kept for it to see.
        batch = (parent_run_id, id(params)) if batch_size > 1 else None
        if batch is not None:
            self._raise_if_denied(batch, params)
        task = self._task_to_watch(batch) if self.run_inline else None
        try:
            # The typed DeniedError: LangChain re-raises it (raise_error), the call stops.
            reservation_id = self.client.reserve_id(
                estimate.microdollars,
                model=model or "unknown",
                provider=provider or "unknown",
                trace_id=trace_id,
                **run.options(),
            )
        except Exception as refused:  # a denial, or no answer from the server
            if batch is not None:
                self._deny_batch(batch, params, refused)
            raise
        call = _Open(
            reservation_id,
            estimate.microdollars,
            estimate.input_tokens,
            model,
            provider,
            cache_ttl,
            time.perf_counter(),
            batch,
            parent_run_id,
            task,
        )
        if batch is None:
            self._open[run_id] = call  # one dict store: atomic, no lock needed
            # Its run cancelled while it reserved (server mode): the call will never be made.
            cancelled = self._cancelled and parent_run_id in self._cancelled
            if cancelled and self._open.pop(run_id, None) is not None:
                self.client.release_later(reservation_id)  # never sent
        else:
            with self._lock:  # a sibling's denial and this store are one step
                if (sibling_refused := self._denial_of(batch, params)) is not None:
                    self.client.release_later(reservation_id)
                    raise sibling_refused
                self._open[run_id] = call
        if task is not None:
            self._watched[task].append(run_id)

    def _task_to_watch(self, batch: _Batch | None) -> asyncio.Task[Any] | None:
        """The task this call starts in, watched so that a call still open when it ends is
        ended: a cancelled ``ainvoke`` (a timeout, a stopped agent) leaves ``asyncio.gather``
        in LangChain's ``agenerate`` with neither end nor error heard.

        A task that caught the cancellation (``asyncio.timeout``) goes on, perhaps for the
        life of the service: the calls it left are ended when it starts its next one, before
        that one reserves. A task waits on one call at a time, so any of its calls still open
        then, other than this one's batch siblings and a stream it may finish later, were
        left."""
        loop = asyncio._get_running_loop()  # None in sync code: no exception to raise and catch
        if loop is None or (task := asyncio.current_task(loop)) is None:
            return None
        if getattr(task.get_coro(), "cr_code", None) is _START_ONLY_TASK:
            return None
        runs = self._watched.get(task)
        if runs is None:
            self._watched[task] = []
            task.add_done_callback(self._on_task_done)
        elif runs:
            self._abandon(
                self._take(
                    lambda call: not call.read_by_caller and (batch is None or call.batch != batch),
                    runs,
                )
            )
            runs[:] = [run for run in runs if run in self._open]  # the task's calls still going
        return task

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        """A call still open when its task ends was cancelled with it, or in it (a timeout the
        task caught: ``asyncio.timeout``). Only a stream the caller reads can go on in another
        task, handed on by one that ended well: those are left to their own end."""
        runs = self._watched.pop(task, [])
        cancelled = task.cancelled()
        self._abandon(self._take(lambda call: cancelled or not call.read_by_caller, runs))

    def _take(
        self, which: Callable[[_Open], bool], among: Iterable[UUID] | None = None
    ) -> list[_Open]:
        """Take out the open calls ``which`` picks (of the runs ``among``, else all): each once,
        even when another thread takes some meanwhile (a pop is atomic)."""
        open_calls = self._open
        candidates = (
            list(open_calls.items())
            if among is None
            else [(run, call) for run in among if (call := open_calls.get(run)) is not None]
        )
        picked = [run for run, call in candidates if which(call)]
        return [call for run in picked if (call := open_calls.pop(run, None)) is not None]

    def _abandon(self, calls: Iterable[_Open]) -> None:
        """End calls LangChain will never end (cancelled in flight): a stream that had started
        is charged the usage its chunks reported; any other call its estimate, as the proxy
        charges a call its client left: its request may have been answered and billed (a
        LangGraph branch cancelled because another failed, or was denied, after the provider
        answered it)."""
        for call in calls:
            if call.usage_seen:
                self._settle(call, reading_from_metadata(call.usage_seen, cache_ttl=call.cache_ttl))
            else:
                self._settle(call, NO_READING)

    def _deny_batch(self, batch: _Batch, params: object, refused: Exception) -> None:
        """Release the reservations of a refused prompt's siblings (the model is not called),
        and keep the refusal for siblings still on their way."""
        now = time.monotonic()
        with self._lock:
            for key in [k for k, (_, _, at) in self._denied.items() if now - at > _DENIAL_KEPT]:
                del self._denied[key]
            # The params object is kept too: alive, its id cannot name another batch.
            self._denied[batch] = (params, refused, now)
            calls = self._take(lambda call: call.batch == batch)
        for call in calls:
            self.client.release_later(call.reservation_id)

    def _denial_of(self, batch: _Batch, params: object) -> Exception | None:
        kept = self._denied.get(batch)
        return kept[1] if kept is not None and kept[0] is params else None

    def _raise_if_denied(self, batch: _Batch, params: object) -> None:
        with self._lock:
            denied = self._denial_of(batch, params)
        if denied is not None:
            raise denied

    def _root(self, run_id: UUID) -> UUID:
        parents = self._parents
        # Empty for a model called outside any chain: no lookup (a UUID hashes in Python).
        while parents and (parent := parents.get(run_id)) is not None:
            run_id = parent
        return run_id

    # --- the run tree: chains (LangGraph nodes, agents) and tools around the calls ------------

    def _enter(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        if parent_run_id is not None:
            self._parents[run_id] = parent_run_id

    def _leave(self, run_id: UUID) -> None:
        self._parents.pop(run_id, None)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._enter(run_id, parent_run_id)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._enter(run_id, parent_run_id)

    def on_retriever_start(
        self,
        serialized: dict[str, Any],
        query: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._enter(run_id, parent_run_id)  # a model may be called inside a retriever

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._leave(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._left_on_error(run_id, error)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._leave(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._left_on_error(run_id, error)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._leave(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._left_on_error(run_id, error)

    def _left_on_error(self, run_id: UUID, error: BaseException) -> None:
        """A run cancelled (a LangGraph stream stopped, a timed-out node) has cancelled the
        model calls inside it, which LangChain may then never end: they are ended here. Any
        other error may leave a sibling branch's call running (``RunnableParallel``), and a
        stream closed (``GeneratorExit``) closes the model's own stream after its chain's,
        with the usage it got: those are left to their own end."""
        self._leave(run_id)
        if not isinstance(error, asyncio.CancelledError):
            return
        # A tool cancelled with its run never reports its end (langchain-core's arun catches
        # Exception only): without this, each such tool run stayed in _parents for good.
        for child in [c for c, parent in list(self._parents.items()) if parent == run_id]:
            self._leave(child)
        if not self.run_inline:  # starts run in executor threads: one may still be reserving
            now = time.monotonic()
            for run in [r for r, at in list(self._cancelled.items()) if now - at > _DENIAL_KEPT]:
                self._cancelled.pop(run, None)
            self._cancelled[run_id] = now
        if self._open:
            self._abandon(self._take(lambda call: call.parent == run_id))

    def _run_tags(self, run_tags: Sequence[str] | None) -> dict[str, str]:
        """The run's LangChain tags (bare strings) as ``key=true``, those that stay valid on
        top of the handler's own tags."""
        tags = dict(self.scope.tags)
        for tag in run_tags or ():
            if tag in tags:  # the handler's value stands: its tag budget must still apply
                continue
            candidate = {**tags, tag: "true"}
            if len(candidate) <= _MAX_TAGS and not tag_errors(candidate):
                tags = candidate
        return tags

    def on_llm_new_token(
        self, token: str | list[str | dict[str, Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        # The only sign a call streams: invocation_params say stream=False either way.
        if (call := self._open.get(run_id)) is not None:
            if (renewal := call.renewal) is None:  # its first token
                if call.task is not None:
                    call.read_by_caller = _read_by_caller()
                renewal = call.renewal = Renewal(self.client, call.reservation_id, call.started)
            renewal.heard()
            # Kept for a stream ended without its end heard (_abandon): its usage may have come.
            chunk = kwargs.get("chunk")
            if usage := getattr(getattr(chunk, "message", None), "usage_metadata", None):
                call.usage_seen = add_usage(call.usage_seen, usage)

    # --- end: settle, or release ---------------------------------------------------------------

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        call = self._open.pop(run_id, None)  # atomic: a batch's denial pops under the lock
        if call is None:
            return
        # Warned once settled: a warning turned into an error (pytest's filterwarnings =
        # error) would otherwise leave the call unrecorded, its reservation held.
        notes: list[str] = []
        try:
            reading = _reading(response, batched=call.batch is not None, cache_ttl=call.cache_ttl)
        except Exception as error:  # the call was answered (and billed): never the caller's error
            notes.append(
                f"the usage of a LangChain call could not be read ({error}); recorded at its "
                "estimate"
            )
            reading = NO_READING
        if reading is _CACHE_HIT:
            self.client.release_later(call.reservation_id)
            return
        usage = reading.usage
        if (
            usage is not None
            and not usage.input_tokens  # first: the rest is rarely read
            and usage.output_tokens
            and usage.prompt_tokens == 0
        ):
            # No call reads nothing. LangChain reports no input when a stream's last event
            # leaves it out (Anthropic-compatible servers answering as the API did before
            # mid-2025): the input is counted at the estimate rather than at zero.
            notes.append(
                "a LangChain call reported no input tokens; its input is recorded at the estimate"
            )
            usage = dataclasses.replace(usage, input_tokens=call.estimated_input_tokens)
            reading = dataclasses.replace(reading, usage=usage)
        if usage is None and call.renewal is not None:
            notes.append(
                "a streamed LangChain call ended without usage; recorded at its estimate. "
                "Models with a custom base_url report stream usage only with stream_usage=True"
            )
        self._settle(call, reading)
        for note in notes:
            warnings.warn(note, stacklevel=2)

    def _settle(self, call: _Open, reading: Reading) -> None:
        options = settlement(
            reading,
            estimate_microdollars=call.estimate_microdollars,
            model=call.model,
            provider=call.provider,
            started=call.started,
        )
        self.client.settle_later(call.reservation_id, **options)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """A call that failed before its request was sent (no connection), or that the provider
        refused, cost nothing: released. One that failed after (a read timeout, a connection
        lost, cancelled while waiting) may have been answered and billed, the provider going on
        without the client: charged its estimate, as the tracked clients charge it. A stream
        that broke off (or was stopped) had spent tokens: settled from what usage it reported,
        else at the estimate. An answer refused after it came (the openai SDK's
        ``LengthFinishReasonError``: a structured output cut off at max_tokens) was billed:
        settled from the usage the error carries."""
        with self._lock:
            call = self._open.get(run_id)
        if call is None:
            return
        if call.batch is not None and _stopped_its_batch(error):
            self._end_siblings(call)
        if (answered := _answer_in(error)) is not None:
            with self._lock:
                self._open.pop(run_id, None)
            self._settle(call, answered)
            return
        if call.renewal is not None:  # streamed
            partial = kwargs.get("response")
            self.on_llm_end(
                partial if isinstance(partial, LLMResult) else LLMResult(generations=[]),
                run_id=run_id,
            )
            return
        with self._lock:
            self._open.pop(run_id, None)
        if may_have_been_taken(error):
            self._settle(call, NO_READING)
        else:
            self.client.release_later(call.reservation_id)

    def _end_siblings(self, failed: _Open) -> None:
        """End the other prompts of a sync ``generate`` stopped by ``failed``: those before it
        were answered, their usage thrown away with the batch (charged their estimate); those
        after it were never sent (released)."""
        with self._lock:
            siblings = self._take(lambda call: call.batch == failed.batch and call is not failed)
        for call in siblings:
            if call.started < failed.started:
                self._settle(call, NO_READING)
            else:
                self.client.release_later(call.reservation_id)


# LangChain's sync BaseChatModel.generate: it calls its prompts one by one and stops at the
# first that fails, ending none of the others. (agenerate ends every prompt itself.)
_SYNC_GENERATE = BaseChatModel.generate.__code__


# BaseLLM.agenerate starts each prompt in a task of its own (asyncio.gather), which ends as soon
# as the start has: it says nothing of the call.
_START_ONLY_TASK = AsyncCallbackManager.on_llm_start.__code__
# Where a stream's chunks come from: a caller's stream, or LangChain reading one itself inside a
# call that answers at once (in the task asyncio.gather runs it in).
_CALLERS_STREAMS = frozenset(
    f.__code__
    for f in (BaseChatModel.astream, BaseChatModel.stream, BaseLLM.astream, BaseLLM.stream)
)
_LANGCHAINS_OWN_READS = frozenset(
    f.__code__ for f in (BaseChatModel._agenerate_with_cache, BaseChatModel._generate_with_cache)
)


def _read_by_caller() -> bool:
    """Whether the stream whose first chunk is being heard is the caller's: the nearer of the
    two up the stack. Neither found (a model that streams its own way): taken for the caller's,
    left to its own end as before."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code in _CALLERS_STREAMS:
            return True
        if frame.f_code in _LANGCHAINS_OWN_READS:
            return False
        frame = frame.f_back
    return True


def _stopped_its_batch(error: BaseException) -> bool:
    """Whether ``error`` is a prompt's failure that sync ``generate`` is raising: it is caught
    in generate's own frame, the first of its traceback."""
    trace = error.__traceback__
    return trace is not None and trace.tb_frame.f_code is _SYNC_GENERATE


def _answer_in(error: BaseException) -> Reading | None:
    """The provider's answer an error raised after it came carries, or None: the openai SDK's
    ``LengthFinishReasonError`` keeps the ``completion``; langchain-openai attaches the HTTP
    response to the others (``ContentFilterFinishReasonError``, a parse that failed)."""
    completion = getattr(error, "completion", None)
    dump = getattr(completion, "model_dump", None)
    if callable(dump):
        body = dump()
    else:
        response = getattr(error, "response", None)
        if not isinstance(response, httpx.Response) or not response.is_success:
            return None  # no answer, or the provider's refusal: nothing billed
        try:
            body = response.json()
        except (httpx.ResponseNotRead, ValueError):  # a stream, or not JSON
            return None
    if not isinstance(body, dict) or (wire := format_of(body)) is None:
        return None
    try:
        return wire.read_response(body)  # with no usage, charged its estimate: it was billed
    except Exception:  # answered and billed, its usage unreadable: never the caller's error
        return NO_READING  # charged its estimate


def _web_searches(message: BaseMessage) -> int:
    """The server-side web searches in an answer in content blocks, billed apart from its
    tokens. Anthropic's usage counts them; a stream's last event does too, but
    langchain-anthropic keeps only its tokens, so there they are counted from the
    ``server_tool_use`` blocks. OpenAI's Responses API reports its searches as
    ``web_search_call`` items, which LangChain keeps as blocks (``server_tool_call`` ones named
    ``web_search``, their action as ``args``, in its v1 output)."""
    usage = message.response_metadata.get("usage")
    server = usage.get("server_tool_use") if isinstance(usage, Mapping) else None
    if isinstance(server, Mapping):
        return int(server.get("web_search_requests") or 0)
    anthropic_searches = 0
    openai_calls: list[Mapping[str, Any]] = []
    for block in message.content:
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "web_search_call":
            openai_calls.append(block)
        elif block.get("name") != "web_search":
            continue
        elif kind == "server_tool_use":
            anthropic_searches += 1
        elif kind == "server_tool_call":
            openai_calls.append({"type": "web_search_call", "action": block.get("args")})
    return anthropic_searches + web_search_calls(openai_calls)


def _schema_as_sent(schema: Any) -> bytes:
    """A structured output's schema as the model sends it, encoded: a class (Pydantic, a
    TypedDict) as its JSON schema, not its name."""
    if isinstance(schema, type):
        return _class_schema_as_sent(schema)
    return _encode_json(schema).encode()


@functools.lru_cache(maxsize=256)
def _class_schema_as_sent(schema: type) -> bytes:
    # Converted once per class: a conversion took 110-500 µs, on every call.
    try:
        sent: Any = convert_to_json_schema(schema)
    except Exception:  # a class LangChain cannot read: the model's request fails on it anyway
        sent = schema
    return _encode_json(sent).encode()


def _web_searches_allowed(request: Mapping[str, Any]) -> int:
    return ANTHROPIC_MESSAGES.requested_web_searches(
        request
    ) or OPENAI_RESPONSES.requested_web_searches(request)


def _cache_ttl(text: list[Any], params: Mapping[str, Any]) -> str | None:
    """The prompt-cache lifetime a call asks for ("5m" or "1h"; None: no caching), read as
    Anthropic's API reads ``cache_control``: on content blocks, tools, or the whole request."""
    return ANTHROPIC_MESSAGES.requested_cache_ttl(
        {
            "cache_control": params.get("cache_control"),
            "tools": params.get("tools"),
            "messages": [{"content": content} for content in text],
        }
    )


def _model_of(params: Mapping[str, Any], metadata: Mapping[str, Any]) -> str | None:
    model = params.get("model") or params.get("model_name") or metadata.get("ls_model_name")
    return model if isinstance(model, str) else None


def _side_calls(request: Mapping[str, Any], context_management: Any) -> tuple[SideCall, ...]:
    """The passes Claude may run besides a call (compaction, an advisor tool's calls), served
    wherever it is (the Anthropic API, Bedrock, Vertex, a gateway)."""
    if context_management is not None:
        request = {**request, "context_management": context_management}
    return ANTHROPIC_MESSAGES.requested_side_calls(request)


def _with_passes_billed_besides(reading: Reading, response_metadata: Mapping[str, Any]) -> Reading:
    """``reading`` with the passes an Anthropic answer billed besides its own usage, which
    usage_metadata leaves out (compaction's, an advisor's: ``usage.iterations``, kept raw in
    response_metadata by langchain-anthropic; a stream's chunks drop them), each at its model,
    and the model a fallback served the call on."""
    raw = response_metadata.get("usage")
    if not (isinstance(raw, Mapping) and raw.get("iterations")):
        return reading
    try:
        billed = ANTHROPIC_MESSAGES.read_response({"usage": raw, "model": reading.model})
    except ValueError:  # unreadable: the call's own usage stands
        return reading
    reading.extra, reading.model = billed.extra, billed.model
    return reading


def _reading(response: LLMResult, *, batched: bool, cache_ttl: str | None = None) -> Reading:
    """The usage and model a result reports (``_CACHE_HIT`` for an answer from LangChain's
    cache): from the message's usage_metadata (chat models; ``cache_ttl`` is what the call
    asked for),
    else the provider's token_usage in llm_output. Of a batch of prompts to a plain LLM, the
    first prompt's result carries the whole batch's token_usage and the others an empty one
    (``LLMResult.flatten``): those cost nothing more."""
    for generations in response.generations:
        for generation in generations:
            if isinstance(generation, ChatGeneration):
                message = generation.message
                metadata = getattr(message, "usage_metadata", None)
                model = message.response_metadata.get(
                    "model_name"
                ) or message.response_metadata.get("model")
                if metadata:
                    if metadata.get("total_cost") == 0:  # LangChain's mark of a cache hit
                        return _CACHE_HIT
                    if not (metadata.get("input_tokens") or metadata.get("output_tokens")):
                        # No event carried usage (an Anthropic-compatible server's stream):
                        # LangChain's zeros are not a call that cost nothing.
                        return NO_READING
                    # Only an answer in content blocks can hold a server tool's searches.
                    searches = _web_searches(message) if type(message.content) is list else 0
                    reading = reading_from_metadata(
                        metadata, model, cache_ttl=cache_ttl, web_searches=searches
                    )
                    return _with_passes_billed_besides(reading, message.response_metadata)
    output = response.llm_output or {}
    token_usage = output.get("token_usage") or output.get("usage")
    if isinstance(token_usage, Mapping) and token_usage:
        prompt = int(token_usage.get("prompt_tokens") or token_usage.get("input_tokens") or 0)
        completion = int(
            token_usage.get("completion_tokens") or token_usage.get("output_tokens") or 0
        )
        model = output.get("model_name") or output.get("model")
        return Reading(Usage(input_tokens=prompt, output_tokens=completion), model)
    if batched and output.get("token_usage") == {}:
        return Reading(_NO_USAGE, output.get("model_name") or output.get("model"))
    return NO_READING
