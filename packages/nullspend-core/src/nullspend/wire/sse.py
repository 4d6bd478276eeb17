"""Incremental Server-Sent-Events decoding over raw bytes, shared by every streamed wire format.

Follows the WHATWG event-stream rules (``\\r``, ``\\n`` and ``\\r\\n`` all end a line; ``:``
starts a comment; one space after the field colon is dropped; ``data`` lines join with ``\\n``;
``id`` and ``retry`` do not matter here and are ignored). Unlike a browser, an event left
unterminated when the stream ends is still dispatched: a saved or cut-off stream often lacks the
final blank line, and its last event is the one carrying usage.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

from nullspend.usage import Usage
from nullspend.wire.base import PricedPart, Reading


class SSEEvent(NamedTuple):
    event: str
    """The ``event:`` field, or ``"message"`` when the event has none (the SSE default)."""
    data: str


class SSEDecoder:
    """Turns byte chunks, split anywhere, into events, scanning each byte a bounded number of times.

    Only complete lines are decoded, so a multi-byte UTF-8 character split across chunks is
    never decoded in halves (line ends are ASCII and cannot occur inside one).
    """

    __slots__ = ("_data", "_event", "_partial", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._partial: list[bytes] = []  # pieces of the line still waiting for its line end
        self._skip_lf = False  # the last chunk ended in \r: a leading \n completes that \r\n
        self._started = False
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\n" not in chunk and b"\r" not in chunk:
            # Scan only the new bytes: re-joining the whole pending line per chunk is quadratic.
            if chunk:
                self._partial.append(chunk)
            return []
        if self._partial:
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            self._partial = []
        lines = chunk.splitlines()  # bytes.splitlines breaks on exactly \r, \n and \r\n
        if chunk.endswith(b"\r"):
            self._skip_lf = True
        elif not chunk.endswith(b"\n"):  # the last line is still incomplete
            self._partial.append(lines.pop())
        events: list[SSEEvent] = []
        for line in lines:
            self._line(line, events)
        return events

    def finish(self) -> list[SSEEvent]:
        """Flushes an unterminated last line and event, and resets the decoder for a new stream."""
        events: list[SSEEvent] = []
        if self._partial:
            self._line(b"".join(self._partial), events)
        self._line(b"", events)
        self._partial = []
        self._skip_lf = False
        self._started = False
        return events

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                self._data = []
            self._event = ""
            return
        line = raw.decode("utf-8", "replace")
        if not self._started:
            self._started = True
            line = line.removeprefix("\ufeff")  # the spec allows one byte-order mark up front
        field, colon, value = line.partition(":")
        if not field and colon:
            return  # comment, e.g. a keep-alive
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value


class SSEAccumulator(ABC):
    """A StreamAccumulator for formats streamed as SSE: subclasses only interpret events.

    ``_on_event`` may raise ValueError for an event it cannot read: the event is skipped, so a
    malformed event never breaks the proxy relaying the stream. Handlers therefore assign
    ``_usage``, ``_model``, ``_service_tier`` and ``_extra`` only once an event has been read in
    full.
    """

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._usage: Usage | None = None
        self._model: str | None = None
        self._service_tier: str | None = None
        self._extra: tuple[PricedPart, ...] = ()

    def feed(self, chunk: bytes) -> None:
        for event in self._decoder.feed(chunk):
            self._handle(event)

    def finish(self) -> Reading:
        for event in self._decoder.finish():
            self._handle(event)
        return Reading(self._usage, self._model, self._service_tier, self._extra)

    def _handle(self, event: SSEEvent) -> None:
        try:
            self._on_event(event)
        except ValueError:
            return  # unreadable event: keep what earlier events said

    @abstractmethod
    def _on_event(self, event: SSEEvent) -> None: ...
