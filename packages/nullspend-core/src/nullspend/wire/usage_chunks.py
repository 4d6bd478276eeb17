"""Giving a client the OpenAI chat stream it asked for, when NullSpend asked for more.

With ``stream_options.include_usage`` OpenAI adds a final usage-only chunk (``choices: []``)
and a ``"usage":null`` field to every other chunk. When NullSpend added the option itself, both
are taken out again, event by event (by the proxy, or by a tracked SDK client); everything else
passes byte for byte. Each event is held only until its blank line arrives.
"""

from __future__ import annotations

import json
import re

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_NULL_USAGE = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')


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
        payload = json.loads(data)
    except ValueError:
        return event
    if isinstance(payload, dict) and payload.get("choices") == [] and payload.get("usage"):
        return b""  # the usage-only chunk the client did not ask for
    return _NULL_USAGE.sub(b"", event, count=1)
