"""Asking an OpenAI chat stream for its usage, and giving the client the stream it asked for.

Without ``stream_options.include_usage`` such a stream carries no usage at all, so NullSpend
adds the option (``asking_for_usage``). With it OpenAI adds a final usage-only chunk
(``choices: []``) and a ``"usage":null`` field to every other chunk. When NullSpend added the
option itself, both are taken out again, event by event (by the proxy, or by a tracked SDK
client); everything else passes byte for byte. Each event is held only until its blank line
arrives.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from nullspend.wire._json import parse_object
from nullspend.wire.base import WireFormat
from nullspend.wire.openai_chat import OPENAI_CHAT

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')
_ASKING = b',"stream_options":{"include_usage":true}}'
_JSON_SPACE = b" \t\r\n"


def asking_for_usage(
    wire: WireFormat, body: Mapping[str, Any], raw: bytes | None = None
) -> bytes | None:
    """The request changed to ask for the stream's usage, or None when it needs no change (not
    an OpenAI chat stream, or one that asks already). Its usage chunk is then taken out again
    by ``UsageChunkFilter``.

    Given the bytes ``body`` was parsed from (``raw``), and no ``stream_options`` to change,
    the option is added after them: the rest goes as the client wrote it (a number past a
    float's range, say, which re-encoding would turn into ``Infinity``, no JSON at all)."""
    if wire is not OPENAI_CHAT or body.get("stream") is not True:
        return None
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        return None
    if raw is not None and "stream_options" not in body:
        # An object in UTF-8 (or ASCII) begins and ends with its braces; UTF-16 or UTF-32
        # would put NUL bytes there, and cannot take our ASCII.
        end = raw.rstrip(_JSON_SPACE)
        if raw.lstrip(_JSON_SPACE)[:1] == b"{" and end[-1:] == b"}":
            return end[:-1] + _ASKING
    options = options if isinstance(options, dict) else {}
    asking = {**body, "stream_options": {**options, "include_usage": True}}
    # ASCII: a lone surrogate (a JSON \ud83d escape) has no UTF-8 encoding
    return json.dumps(asking, separators=(",", ":")).encode()


class UsageChunkFilter:
    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        self._pending += chunk
        out = []
        start = 0
        while (end := _EVENT_END.search(self._pending, start)) is not None:
            out.append(_filter_event(self._pending[start : end.end()]))
            start = end.end()
        self._pending = self._pending[start:]
        return b"".join(out)

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        return _filter_event(rest) if rest else b""


def _filter_event(event: bytes) -> bytes:
    if b'"usage"' not in event:
        return event
    data = b"".join(line[5:] for line in event.splitlines() if line.startswith(b"data:"))
    try:
        payload = parse_object(data)  # not json.loads: a chunk nested too deeply raises
    except ValueError:
        return event
    if payload.get("choices") == [] and payload.get("usage"):
        return b""  # the usage-only chunk the client did not ask for
    return _NULL_USAGE.sub(b"", event, count=1)
