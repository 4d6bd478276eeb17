"""Anthropic Messages (``POST /v1/messages``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from nullspend.usage import Usage
from nullspend.wire._json import count, items, parse_object, request_int, section, text
from nullspend.wire.base import (
    JSONObject,
    PricedPart,
    Reading,
    SideCall,
    StreamAccumulator,
    web_searches_allowed,
)
from nullspend.wire.sse import SSEAccumulator, SSEEvent

_WHERE = "anthropic.messages usage"

TOOL_USE_SYSTEM_PROMPT_TOKENS = 530
"""The system prompt Anthropic adds to every request that sends tools, billed as input: 530
tokens is the most it documents (Claude 3 Opus, ``tool_choice`` auto); current models take 346."""

BUILT_IN_TOOL_TOKENS = {"bash_": 245, "text_editor_": 700, "computer_": 735 + 499}
"""What each Anthropic-defined tool (by its type's prefix, as ``bash_20250124``) bills for the
definition its short spec in the body stands for; computer use adds a system prompt of its own
(at most 499 tokens) to its 735."""


def _usage_from(usage: JSONObject, where: str = _WHERE) -> Usage:
    """Map a ``Usage`` object: unlike OpenAI's, ``input_tokens`` already excludes cache traffic.

    ``cache_creation_input_tokens`` is the billed write total; the ``cache_creation`` breakdown
    only decides how much of it was written for 1h (the rest, or all of it without a breakdown,
    is 5m). The total wins if the two disagree, as after a stream delta updated only the total.
    """
    split = section(usage, "cache_creation", where)
    where_split = f"{where}.cache_creation"
    write_1h = count(split, "ephemeral_1h_input_tokens", where_split)
    if usage.get("cache_creation_input_tokens") is None:
        written = count(split, "ephemeral_5m_input_tokens", where_split) + write_1h
    else:
        written = count(usage, "cache_creation_input_tokens", where)
    write_1h = min(write_1h, written)
    output = count(usage, "output_tokens", where)
    thinking = count(
        section(usage, "output_tokens_details", where),
        "thinking_tokens",
        f"{where}.output_tokens_details",
    )
    return Usage(
        input_tokens=count(usage, "input_tokens", where),
        cache_read_tokens=count(usage, "cache_read_input_tokens", where),
        cache_write_5m_tokens=written - write_1h,
        cache_write_1h_tokens=write_1h,
        output_tokens=output,
        reasoning_tokens=min(output, thinking),
        web_search_requests=count(
            section(usage, "server_tool_use", where),
            "web_search_requests",
            f"{where}.server_tool_use",
        ),
    )


def _reading_from(usage: JSONObject, model: str | None) -> Reading:
    """The reading of a ``Usage`` object whose output is counted, with its ``iterations``.

    The top-level counts are the sum of the ``message`` (and ``fallback_message``) iterations;
    a ``compaction`` iteration (server-side context compaction, run on the request's model) and
    an ``advisor_message`` one (the advisor tool's sub-inference, on the advisor's model) are
    billed besides them and are not in them, so each is an extra part priced at its model.
    A ``fallback_message`` iteration means a fallback model served the answer: the top-level
    counts are billed at that model, whatever model the answer (or a stream's start) named.
    Types this reader does not know are left out: they cannot be priced.
    """
    extra: list[PricedPart] = []
    requested = model  # compaction's model, whichever model a fallback then served on
    for n, entry in enumerate(items(usage, "iterations", _WHERE)):
        where = f"{_WHERE}.iterations[{n}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where} must be an object, got {type(entry).__name__}")
        kind = entry.get("type")
        if kind == "compaction":
            extra.append(PricedPart(requested, _usage_from(entry, where)))
        elif kind == "advisor_message":
            # An advisor part names its model; one that does not is billed at the call's model.
            extra.append(PricedPart(text(entry, "model"), _usage_from(entry, where)))
        elif kind == "fallback_message":
            model = text(entry, "model") or model
    return Reading(_usage_from(usage), model, extra=tuple(extra))


class _MessagesStream(SSEAccumulator):
    """message_start holds the input side; each message_delta restates running totals.

    A delta's counts are cumulative, so a field it carries REPLACES the earlier value (adding
    would double-count input and cache tokens that message_start already reported). Usage is
    reported only once a delta counted the output: before that, output_tokens is a placeholder
    and a reading from it would understate a stream cut short (or one a gateway stripped of its
    delta's usage), which must be estimated instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self._totals: dict[str, Any] = {}

    def _on_event(self, event: SSEEvent) -> None:
        # Only these two events carry usage or the model; content deltas are never parsed.
        if event.event == "message_delta":
            delta = section(parse_object(event.data), "usage", "anthropic.messages message_delta")
            totals = self._totals | {k: v for k, v in delta.items() if v is not None}
            if delta.get("output_tokens") is not None:
                # The iterations (and a fallback's serving model) come in the last delta.
                reading = _reading_from(totals, self._model)
                self._usage, self._model, self._extra = reading.usage, reading.model, reading.extra
            self._totals = totals
        elif event.event == "message_start":
            message = section(parse_object(event.data), "message", "anthropic.messages event")
            totals = dict(section(message, "usage", "anthropic.messages message"))
            _usage_from(totals)  # unreadable start counts are skipped now, not at every delta
            self._totals = totals
            self._model = text(message, "model") or self._model


COMPACTION_TRIGGER_TOKENS = 150_000
"""The prompt size at which server-side compaction (``compact_20260112``) runs when its
``trigger`` sets none."""

ASSUMED_ADVISOR_CALLS = 3
"""The advisor calls a request whose advisor tool sets no ``max_uses`` is assumed to make (the
API sets no limit): an advisor typically runs once or twice a task, and each reads the whole
transcript at the advisor model's rates."""


def _compaction(body: JSONObject) -> Iterator[SideCall]:
    """Server-side compaction (beta ``compact-2026-01-12``): once the prompt reaches its trigger,
    the request's model summarizes it, a pass billed besides the answer (its input is the whole
    prompt, its output the summary). Counted once a request; the summary's length is not
    bounded by ``max_tokens``, so it is bounded by the model's output cap."""
    management = body.get("context_management")
    edits = management.get("edits") if isinstance(management, Mapping) else None
    for edit in edits if isinstance(edits, list) else ():
        if isinstance(edit, Mapping) and str(edit.get("type", "")).startswith("compact_"):
            trigger = edit.get("trigger")
            value = trigger.get("value") if isinstance(trigger, Mapping) else None
            threshold = value if type(value) is int and value > 0 else COMPACTION_TRIGGER_TOKENS
            yield SideCall(None, 1, None, min_input_tokens=threshold)
            return


def _advisors(body: JSONObject) -> Iterator[SideCall]:
    """The advisor tool (beta ``advisor-tool-2026-03-01``): each call is a sub-inference on the
    tool's ``model`` over the whole transcript, at most ``max_uses`` times (else
    ``ASSUMED_ADVISOR_CALLS``), each to the tool's ``max_tokens`` (else the advisor model's
    output cap); with ``caching`` set, each call writes its prompt to the cache."""
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, Mapping) or not str(tool.get("type", "")).startswith("advisor_"):
            continue
        uses = tool.get("max_uses")
        caching = tool.get("caching")
        yield SideCall(
            text(tool, "model"),
            uses if type(uses) is int and uses > 0 else ASSUMED_ADVISOR_CALLS,
            request_int(tool, "max_tokens") or None,
            cache_ttl=(caching.get("ttl") or "5m") if isinstance(caching, Mapping) else None,
        )


def _is_web_search(tool_type: object) -> bool:
    """The server-side web search tool, in any version (``web_search_20250305``)."""
    return isinstance(tool_type, str) and tool_type.startswith("web_search_")


def _cache_controls(body: JSONObject) -> Iterator[Any]:
    """Every ``cache_control`` a request sets: top level, tools, system and content blocks."""
    yield body.get("cache_control")
    for key in ("tools", "system"):
        yield from _block_cache_controls(body.get(key))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                yield from _block_cache_controls(message.get("content"))


def _block_cache_controls(blocks: Any) -> Iterator[Any]:
    if not isinstance(blocks, list):
        return  # a plain string system prompt or message cannot carry cache_control
    for block in blocks:
        if isinstance(block, Mapping):
            yield block.get("cache_control")
            # tool_result and search_result blocks nest content blocks of their own.
            yield from _block_cache_controls(block.get("content"))


class AnthropicMessages:
    name = "anthropic.messages"
    provider = "anthropic"

    def read_response(self, body: JSONObject) -> Reading:
        usage = section(body, "usage", "anthropic.messages response")
        model = text(body, "model")
        return _reading_from(usage, model) if usage else Reading(None, model)

    def stream(self) -> StreamAccumulator:
        return _MessagesStream()

    def requested_model(self, body: JSONObject) -> str | None:
        return text(body, "model")

    def requested_output_cap(self, body: JSONObject) -> int | None:
        return request_int(body, "max_tokens")

    def requested_choices(self, body: JSONObject) -> int:
        return 1  # the Messages API has no n

    def continues_stored_context(self, body: JSONObject) -> bool:
        return False

    def requested_service_tier(self, body: JSONObject) -> str | None:
        return None  # the catalog prices no Anthropic processing tier apart

    def requested_web_searches(self, body: JSONObject) -> int:
        return web_searches_allowed(body, _is_web_search)

    def hidden_input_tokens(self, body: JSONObject) -> int:
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools:
            return 0
        hidden = TOOL_USE_SYSTEM_PROMPT_TOKENS
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            if isinstance(kind, str):
                hidden += next(
                    (n for prefix, n in BUILT_IN_TOOL_TOKENS.items() if kind.startswith(prefix)), 0
                )
        return hidden

    def requests_audio_output(self, body: JSONObject) -> bool:
        return False  # Claude answers in text only

    def requested_side_calls(self, body: JSONObject) -> tuple[SideCall, ...]:
        return (*_compaction(body), *_advisors(body))

    def requested_cache_ttl(self, body: JSONObject) -> str | None:
        ttl = None
        for control in _cache_controls(body):
            if isinstance(control, Mapping):
                if control.get("ttl") == "1h":
                    return "1h"
                ttl = "5m"  # the default lifetime when ttl is omitted
        return ttl


ANTHROPIC_MESSAGES = AnthropicMessages()
