"""OpenAI Chat Completions (``POST /v1/chat/completions``)."""

from __future__ import annotations

from collections.abc import Mapping

from nullspend.usage import Usage
from nullspend.wire._json import count, parse_object, request_int, section, text
from nullspend.wire.base import JSONObject, Reading, SideCall, StreamAccumulator
from nullspend.wire.sse import SSEAccumulator, SSEEvent

_WHERE = "openai.chat usage"
MAX_CHOICES = 128
"""The most completions (``n``) OpenAI gives one request; it refuses more."""


def _usage_from(usage: JSONObject) -> Usage:
    """Map a ``CompletionUsage`` object; its totals include their own breakdowns.

    ``prompt_tokens`` includes cached, cache-written and audio tokens, and
    ``completion_tokens`` includes reasoning and audio tokens, so the disjoint components are
    what is left after subtracting the breakdown. Reasoning stays inside output (same price).
    """
    prompt = section(usage, "prompt_tokens_details", _WHERE)
    completion = section(usage, "completion_tokens_details", _WHERE)
    where_prompt = f"{_WHERE}.prompt_tokens_details"
    where_completion = f"{_WHERE}.completion_tokens_details"
    cached = count(prompt, "cached_tokens", where_prompt)
    cache_write = count(prompt, "cache_write_tokens", where_prompt)
    audio_in = count(prompt, "audio_tokens", where_prompt)
    audio_out = count(completion, "audio_tokens", where_completion)
    output = max(0, count(usage, "completion_tokens", _WHERE) - audio_out)
    return Usage(
        input_tokens=max(
            0, count(usage, "prompt_tokens", _WHERE) - cached - cache_write - audio_in
        ),
        cache_read_tokens=cached,
        cache_write_5m_tokens=cache_write,
        output_tokens=output,
        reasoning_tokens=min(output, count(completion, "reasoning_tokens", where_completion)),
        audio_input_tokens=audio_in,
        audio_output_tokens=audio_out,
    )


def _carries_usage(data: str) -> bool:
    """Whether a chunk has a non-null ``usage``: with include_usage every chunk has the key."""
    start = data.find('"usage"')
    while start >= 0:
        start += len('"usage"')
        # A short window after the key holds the colon, any whitespace and the value's start.
        if not data[start : start + 16].lstrip(": \t\r\n").startswith("null"):
            return True
        start = data.find('"usage"', start)
    return False


class _ChatStream(SSEAccumulator):
    def _on_event(self, event: SSEEvent) -> None:
        data = event.data
        # Every chunk repeats the model and only the last one carries usage, so most chunks are
        # never parsed. The model is taken from the first chunk naming one (Azure's first chunk,
        # holding prompt filter results, has an empty model).
        wants_usage = _carries_usage(data)
        if not wants_usage and (self._model is not None or data == "[DONE]"):
            return
        chunk = parse_object(data)
        counts = section(chunk, "usage", "openai.chat chunk") if wants_usage else None
        if counts:
            self._usage = _usage_from(counts)
            self._service_tier = text(chunk, "service_tier")  # in every chunk: read with usage
        self._model = text(chunk, "model") or self._model


class OpenAIChat:
    name = "openai.chat"
    provider = "openai"

    def read_response(self, body: JSONObject) -> Reading:
        usage = section(body, "usage", "openai.chat response")
        return Reading(
            _usage_from(usage) if usage else None, text(body, "model"), text(body, "service_tier")
        )

    def stream(self) -> StreamAccumulator:
        return _ChatStream()

    def requested_model(self, body: JSONObject) -> str | None:
        return text(body, "model")

    def requested_output_cap(self, body: JSONObject) -> int | None:
        # max_tokens is the deprecated spelling; o-series models only accept the new one.
        cap = request_int(body, "max_completion_tokens")
        return cap if cap is not None else request_int(body, "max_tokens")

    def requested_choices(self, body: JSONObject) -> int:
        return min(request_int(body, "n") or 1, MAX_CHOICES)

    def continues_stored_context(self, body: JSONObject) -> bool:
        return False

    def requested_service_tier(self, body: JSONObject) -> str | None:
        return text(body, "service_tier")

    def requested_web_searches(self, body: JSONObject) -> int:
        return 0  # the catalog prices no Chat Completions search apart

    def hidden_input_tokens(self, body: JSONObject) -> int:
        return 0  # OpenAI documents no hidden prompt; a message's framing is in the body

    def requests_audio_output(self, body: JSONObject) -> bool:
        modalities = body.get("modalities")
        return (isinstance(modalities, list) and "audio" in modalities) or isinstance(
            body.get("audio"), Mapping
        )

    def requested_side_calls(self, body: JSONObject) -> tuple[SideCall, ...]:
        return ()

    def requested_cache_ttl(self, body: JSONObject) -> str | None:
        # OpenAI caches implicitly; its 30m/12h write lifetimes have no 5m/1h equivalent.
        return None


OPENAI_CHAT = OpenAIChat()
