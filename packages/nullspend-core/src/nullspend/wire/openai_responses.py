"""OpenAI Responses API (``POST /v1/responses``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nullspend.usage import Usage
from nullspend.wire._json import count, items, parse_object, request_int, section, text
from nullspend.wire.base import (
    JSONObject,
    Reading,
    SideCall,
    StreamAccumulator,
    web_searches_allowed,
)
from nullspend.wire.sse import SSEAccumulator, SSEEvent

_WHERE = "openai.responses response"
_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_WANTED = _TERMINAL | {"response.created"}
# Web search actions that are not billed as a search (OpenAI's tool_usage excludes them).
_NOT_A_SEARCH = frozenset({"open_page", "find_in_page"})


def _web_searches(response: JSONObject) -> int:
    """Billable web searches: ``tool_usage`` when the API reports it, else the search calls."""
    tool_usage = section(response, "tool_usage", _WHERE)
    if tool_usage:
        where = f"{_WHERE}.tool_usage"
        return count(
            section(tool_usage, "web_search", where), "num_requests", f"{where}.web_search"
        )
    return web_search_calls(items(response, "output", _WHERE))


def _is_web_search(tool_type: object) -> bool:
    """The hosted web search tool, in any version (``web_search``, ``web_search_preview``);
    it sets no limit on its searches."""
    return isinstance(tool_type, str) and tool_type.startswith("web_search")


def web_search_calls(output: Iterable[Any]) -> int:
    """The billable searches among a response's output items (or LangChain's content blocks
    of them): its ``web_search_call`` items, less the actions OpenAI does not bill as one."""
    searches = 0
    for item in output:
        if isinstance(item, Mapping) and item.get("type") == "web_search_call":
            action = item.get("action")
            if not isinstance(action, Mapping) or action.get("type") not in _NOT_A_SEARCH:
                searches += 1
    return searches


def _reading_from(response: JSONObject) -> Reading:
    """Map a ``Response`` object; ``input_tokens`` and ``output_tokens`` include their details."""
    usage = section(response, "usage", _WHERE)
    model = text(response, "model")
    if not usage:
        return Reading(None, model, text(response, "service_tier"))
    where = f"{_WHERE}.usage"
    details_in = section(usage, "input_tokens_details", where)
    details_out = section(usage, "output_tokens_details", where)
    cached = count(details_in, "cached_tokens", f"{where}.input_tokens_details")
    # 30m and 12h writes are not told apart: Usage has no bucket for OpenAI's lifetimes.
    cache_write = count(details_in, "cache_write_tokens", f"{where}.input_tokens_details")
    output = count(usage, "output_tokens", where)
    return Reading(
        Usage(
            input_tokens=max(0, count(usage, "input_tokens", where) - cached - cache_write),
            cache_read_tokens=cached,
            cache_write_5m_tokens=cache_write,
            output_tokens=output,
            reasoning_tokens=min(
                output, count(details_out, "reasoning_tokens", f"{where}.output_tokens_details")
            ),
            web_search_requests=_web_searches(response),
        ),
        model,
        text(response, "service_tier"),
    )


class _ResponsesStream(SSEAccumulator):
    def _on_event(self, event: SSEEvent) -> None:
        # Only response.created (model) and the terminal event (usage) matter. The payload's own
        # "type" decides, as in the SDK; the SSE name only lets the many delta events be skipped
        # unparsed, and an unnamed event is parsed only if it could hold a response object.
        if event.event not in _WANTED and (
            event.event != "message" or '"response"' not in event.data
        ):
            return
        payload = parse_object(event.data)
        kind = payload.get("type")
        if kind not in _WANTED:
            return
        response = section(payload, "response", f"openai.responses {kind} event")
        if kind in _TERMINAL:
            reading = _reading_from(response)
            self._usage = reading.usage
            self._model = reading.model or self._model
            self._service_tier = reading.service_tier
        else:
            self._model = text(response, "model") or self._model


class OpenAIResponses:
    name = "openai.responses"
    provider = "openai"

    def read_response(self, body: JSONObject) -> Reading:
        return _reading_from(body)

    def stream(self) -> StreamAccumulator:
        return _ResponsesStream()

    def requested_model(self, body: JSONObject) -> str | None:
        return text(body, "model")

    def requested_output_cap(self, body: JSONObject) -> int | None:
        return request_int(body, "max_output_tokens")

    def requested_choices(self, body: JSONObject) -> int:
        return 1  # the Responses API has no n

    def continues_stored_context(self, body: JSONObject) -> bool:
        # A stored prompt template (``prompt: {"id": ...}``) and an input item given by
        # reference are billed by their stored content too.
        if body.get("previous_response_id") or body.get("conversation"):
            return True
        prompt = body.get("prompt")
        if isinstance(prompt, Mapping) and prompt.get("id"):
            return True
        given = body.get("input")
        return isinstance(given, list) and any(
            isinstance(item, Mapping) and item.get("type") == "item_reference" for item in given
        )

    def requested_service_tier(self, body: JSONObject) -> str | None:
        return text(body, "service_tier")

    def requested_web_searches(self, body: JSONObject) -> int:
        return web_searches_allowed(body, _is_web_search)

    def hidden_input_tokens(self, body: JSONObject) -> int:
        return 0  # OpenAI documents no hidden prompt; a message's framing is in the body

    def requests_audio_output(self, body: JSONObject) -> bool:
        return False  # the Responses API answers in text only

    def requested_side_calls(self, body: JSONObject) -> tuple[SideCall, ...]:
        return ()

    def requested_cache_ttl(self, body: JSONObject) -> str | None:
        # OpenAI's cache write lifetimes (30m, 12h) have no 5m/1h counterpart in this contract.
        return None


OPENAI_RESPONSES = OpenAIResponses()
