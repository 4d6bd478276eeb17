"""The incremental SSE decoder: line ends, splits anywhere, spec field rules, linear time."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nullspend.wire.sse import SSEDecoder, SSEEvent


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    return events + decoder.finish()


def test_named_and_unnamed_events() -> None:
    assert decode(b"event: ping\ndata: {}\n\ndata: x\n\n") == [
        SSEEvent("ping", "{}"),
        SSEEvent("message", "x"),
    ]


def test_multiple_data_lines_join_with_newline() -> None:
    assert decode(b"data: a\ndata: b\ndata:\n\n") == [SSEEvent("message", "a\nb\n")]


def test_only_one_leading_space_is_dropped() -> None:
    assert decode(b"data:x\n\ndata:  y\n\n") == [
        SSEEvent("message", "x"),
        SSEEvent("message", " y"),
    ]


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = b": keep-alive\nid: 7\nretry: 10\nfoo: bar\ndata: x\n\n:\n\n"
    assert decode(stream) == [SSEEvent("message", "x")]


def test_field_without_colon_is_a_field_with_empty_value() -> None:
    assert decode(b"data\n\n") == [SSEEvent("message", "")]


def test_event_without_data_is_not_dispatched_and_its_name_does_not_leak() -> None:
    assert decode(b"event: a\n\ndata: x\n\n") == [SSEEvent("message", "x")]


@pytest.mark.parametrize("end", [b"\n", b"\r", b"\r\n"])
def test_every_line_ending(end: bytes) -> None:
    stream = b"event: e" + end + b"data: 1" + end + end + b"data: 2" + end + end
    assert decode(stream) == [SSEEvent("e", "1"), SSEEvent("message", "2")]


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # A \r closing one chunk and a \n opening the next must not read as an empty line.
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [SSEEvent("message", "a\nb")]


def test_empty_chunk_between_cr_and_lf() -> None:
    assert decode(b"data: a\r", b"", b"\ndata: b\r\n\r\n") == [SSEEvent("message", "a\nb")]


def test_multibyte_utf8_split_across_chunks() -> None:
    raw = "data: héllo 世界 🚀\n\n".encode()
    for cut in range(len(raw)):
        assert decode(raw[:cut], raw[cut:]) == [SSEEvent("message", "héllo 世界 🚀")]


def test_events_are_only_emitted_when_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: par") == []
    assert decoder.feed(b"tial\n") == []
    assert decoder.feed(b"\n") == [SSEEvent("message", "partial")]


def test_finish_flushes_an_unterminated_event() -> None:
    assert decode(b"data: a\n\nevent: last\ndata: b") == [
        SSEEvent("message", "a"),
        SSEEvent("last", "b"),
    ]
    assert decode(b"data: c\n") == [SSEEvent("message", "c")]


def test_decoder_is_reusable_after_finish() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\r")
    assert decoder.finish() == [SSEEvent("message", "a")]
    assert decoder.feed(b"\ndata: b\n\n") == [SSEEvent("message", "b")]


def test_leading_byte_order_mark_is_dropped() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent("message", "x")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode(b"data: \xff\xfe\n\n") == [SSEEvent("message", "\ufffd\ufffd")]


def test_long_line_in_small_chunks_is_linear() -> None:
    # Re-joining or re-scanning the pending line per chunk would take minutes here.
    payload = b"x" * 4_000_000
    decoder = SSEDecoder()
    start = time.perf_counter()
    decoder.feed(b"data: ")
    for i in range(0, len(payload), 64):
        decoder.feed(payload[i : i + 64])
    events = decoder.feed(b"\n\n")
    assert time.perf_counter() - start < 5
    assert len(events) == 1
    assert len(events[0].data) == len(payload)


_line_text = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=20)
_events = st.lists(
    st.tuples(
        st.one_of(st.none(), _line_text.filter(lambda s: s != "")),
        st.lists(_line_text, min_size=1, max_size=3),
    ),
    max_size=6,
)


@given(
    events=_events,
    ends=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1),
    data=st.data(),
)
def test_any_stream_in_any_split_decodes_like_the_spec(
    events: list[tuple[str | None, list[str]]], ends: list[str], data: st.DataObject
) -> None:
    lines: list[str] = []
    for name, data_lines in events:
        if name is not None:
            lines.append(f"event: {name}")
        lines += [f"data: {line}" for line in data_lines]
        lines.append("")
    text = ""
    for i, line in enumerate(lines):
        end = ends[i % len(ends)]
        if not line and text.endswith("\r") and end.startswith("\n"):
            end = "\r"  # "\r" then "\n" would be one \r\n line end, not two
        text += line + end
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=10)))
    bounds = [0, *cuts, len(raw)]
    chunks = [raw[a:b] for a, b in pairwise(bounds)]
    expected = [SSEEvent(name or "message", "\n".join(lines)) for name, lines in events]
    assert decode(*chunks) == expected
