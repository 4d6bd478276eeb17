"""Provider wire formats: reading usage and model out of responses, JSON or streamed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nullspend.wire._json import reading_of_body
from nullspend.wire.anthropic_messages import ANTHROPIC_MESSAGES
from nullspend.wire.base import NO_READING, JSONObject, Reading, StreamAccumulator, WireFormat
from nullspend.wire.gemini import GEMINI
from nullspend.wire.openai_chat import OPENAI_CHAT
from nullspend.wire.openai_responses import OPENAI_RESPONSES
from nullspend.wire.sse import SSEDecoder, SSEEvent

__all__ = [
    "ANTHROPIC_MESSAGES",
    "FORMATS",
    "GEMINI",
    "NO_READING",
    "OPENAI_CHAT",
    "OPENAI_RESPONSES",
    "JSONObject",
    "Reading",
    "StreamAccumulator",
    "WireFormat",
    "detect_format",
    "format_of",
    "reading_of_body",
]

FORMATS: dict[str, WireFormat] = {
    fmt.name: fmt for fmt in (OPENAI_CHAT, OPENAI_RESPONSES, ANTHROPIC_MESSAGES, GEMINI)
}

# Anthropic's stream event types; "ping" and "error" are left out as they say nothing of the API.
_ANTHROPIC_EVENTS = frozenset(
    {
        "message_start",
        "message_delta",
        "message_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
    }
)


def detect_format(data: bytes) -> WireFormat:
    """The wire format of a saved raw response: a JSON body or the text of an SSE stream."""
    text = data.removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"{"):
        try:
            body = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the response starts like JSON but is not valid JSON: {exc}") from exc
        found = format_of(body)
    else:
        decoder = SSEDecoder()
        events = decoder.feed(text) + decoder.finish()
        found = next(filter(None, map(_by_event, events)), None)
    if found is None:
        raise ValueError(
            "unrecognised response: expected an OpenAI chat completion, an OpenAI Responses API "
            "response, an Anthropic message or a Gemini generateContent response, either as a "
            f"JSON body or as an SSE stream; known formats: {', '.join(FORMATS)}"
        )
    return found


def _by_event(event: SSEEvent) -> WireFormat | None:
    if event.event.startswith("response."):
        return OPENAI_RESPONSES
    if event.event in _ANTHROPIC_EVENTS:
        return ANTHROPIC_MESSAGES
    try:
        payload = json.loads(event.data)
    except (ValueError, RecursionError):
        return None  # e.g. OpenAI's "[DONE]", or a line cut short
    return format_of(payload)


def format_of(payload: Any) -> WireFormat | None:
    """The wire format of a JSON body, or of the payload of one stream event, by its telltale
    fields; None if it has none."""
    if not isinstance(payload, Mapping):
        return None
    kind = payload.get("type")
    kind = kind if isinstance(kind, str) else ""
    if payload.get("object") in ("chat.completion", "chat.completion.chunk"):
        return OPENAI_CHAT
    if payload.get("object") == "response" or kind.startswith("response."):
        return OPENAI_RESPONSES
    if kind == "message" or kind in _ANTHROPIC_EVENTS:
        return ANTHROPIC_MESSAGES
    if "usageMetadata" in payload or "candidates" in payload:
        return GEMINI
    return None
