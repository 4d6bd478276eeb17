"""Properties every stream accumulator has: split-invariance, any line ending, never raising."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nullspend.wire import FORMATS, WireFormat
from nullspend.wire.usage_chunks import UsageChunkFilter
from tests.nullspend.wire_testing import fixture, read_bytewise, read_stream, sse

STREAMS = [
    ("openai.chat", "openai_chat_stream.sse"),
    ("openai.chat", "openai_chat_stream_no_usage.sse"),
    ("openai.responses", "openai_responses_stream.sse"),
    ("anthropic.messages", "anthropic_stream_cache.sse"),
    ("gemini.generate_content", "gemini_stream.sse"),
]
IDS = [name for _, name in STREAMS]


def test_fixtures_hold_multibyte_text() -> None:
    for _, name in STREAMS:
        text = fixture(name).decode()
        assert all(ch in text for ch in "é世界🚀"), name


def with_line_ends(data: bytes, end: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", end)


@pytest.mark.parametrize(("fmt", "name"), STREAMS, ids=IDS)
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_any_line_ending_gives_the_same_reading(fmt: str, name: str, end: bytes) -> None:
    data = fixture(name)
    expected = read_stream(FORMATS[fmt], data)
    assert read_stream(FORMATS[fmt], with_line_ends(data, end)) == expected


@pytest.mark.parametrize(("fmt", "name"), STREAMS, ids=IDS)
@pytest.mark.parametrize("end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_byte_by_byte_gives_the_same_reading(fmt: str, name: str, end: bytes) -> None:
    # One byte per chunk splits every \r\n and every multi-byte UTF-8 character.
    data = with_line_ends(fixture(name), end)
    assert read_bytewise(FORMATS[fmt], data) == read_stream(FORMATS[fmt], data)


@pytest.mark.parametrize(("fmt", "name"), STREAMS, ids=IDS)
def test_missing_final_blank_line_is_flushed(fmt: str, name: str) -> None:
    data = fixture(name)
    assert read_stream(FORMATS[fmt], data.rstrip(b"\r\n")) == read_stream(FORMATS[fmt], data)


@pytest.mark.parametrize(("fmt", "name"), STREAMS, ids=IDS)
@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_chunking_gives_the_same_reading(fmt: str, name: str, data: st.DataObject) -> None:
    raw = with_line_ends(fixture(name), data.draw(st.sampled_from([b"\n", b"\r\n"])))
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=40))
    assert read_stream(FORMATS[fmt], raw, cuts) == read_stream(FORMATS[fmt], raw)


# --- Malformed input never escapes feed() or finish() -----------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
usage_like = (
    st.dictionaries(
        st.sampled_from(
            [
                "prompt_tokens",
                "completion_tokens",
                "prompt_tokens_details",
                "completion_tokens_details",
                "input_tokens",
                "output_tokens",
                "input_tokens_details",
                "output_tokens_details",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
                "cache_creation",
                "server_tool_use",
                "promptTokenCount",
                "candidatesTokenCount",
                "thoughtsTokenCount",
                "cachedContentTokenCount",
                "promptTokensDetails",
                "cacheTokensDetails",
            ]
        ),
        json_values,
    )
    | json_values
)


def hostile_events(usage: Any, model: Any) -> list[tuple[str | None, Any]]:
    """Every usage-carrying event of every format, all holding the same hostile values."""
    response = {"model": model, "usage": usage, "output": usage, "tool_usage": usage}
    return [
        (None, {"model": model, "choices": [], "usage": usage}),
        (None, {"usageMetadata": usage, "modelVersion": model}),
        ("message_start", {"type": "message_start", "message": {"model": model, "usage": usage}}),
        ("message_delta", {"type": "message_delta", "usage": usage}),
        ("response.created", {"type": "response.created", "response": response}),
        ("response.completed", {"type": "response.completed", "response": response}),
        ("response.completed", {"type": "response.completed", "response": usage}),
    ]


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(usage=usage_like, model=json_values)
def test_hostile_usage_values_never_raise(fmt: WireFormat, usage: Any, model: Any) -> None:
    data = sse(*hostile_events(usage, model))
    reading = read_stream(fmt, data)
    assert reading.model is None or isinstance(reading.model, str)


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@settings(max_examples=150)
@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_never_raise(fmt: WireFormat, chunks: list[bytes]) -> None:
    acc = fmt.stream()
    for chunk in chunks:
        acc.feed(chunk)
    acc.finish()


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
def test_deeply_nested_json_never_raises(fmt: WireFormat) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    events = [(name, payload) for name, payload in hostile_events(None, "m")]
    data = sse(*events) + b"".join(
        f'event: {name or "message"}\ndata: {{"usage": {deep}, "type": "{name}"}}\n\n'.encode()
        for name, _ in events
    )
    read_stream(fmt, data)
    json.loads("[]")  # the stdlib parser is still usable afterwards


def test_the_usage_chunk_filter_passes_deeply_nested_json_on() -> None:
    """A chunk nested past the JSON parser's depth raised RecursionError out of the filter that
    takes out the usage chunk NullSpend asked for: into the caller's stream loop (a tracked
    client), or mid-stream in the proxy. It passes on as it came, as any chunk it cannot read."""
    deep = b"[" * 100_000 + b"]" * 100_000
    chunk = b'data: {"usage":null,"choices":' + deep + b"}\n\n"
    chunk_filter = UsageChunkFilter()
    out = chunk_filter.feed(chunk) + chunk_filter.finish()
    assert out == chunk
