"""Anthropic Messages: usage mapping, cumulative stream deltas, cache TTLs, SDK fidelity."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from nullspend.usage import Usage
from nullspend.wire import ANTHROPIC_MESSAGES, Reading
from tests.nullspend.wire_testing import (
    fixture,
    fixture_json,
    read_stream,
    spy_json_loads,
    sse,
    sse_payloads,
    unknown_fields,
)

MODEL = "claude-sonnet-4-5-20250929"
STREAM_READING = Reading(
    Usage(input_tokens=20, cache_read_tokens=6000, cache_write_5m_tokens=1500, output_tokens=87),
    MODEL,
)


def stream_events() -> list[tuple[str | None, Any]]:
    return [
        (name, json.loads(data))
        for name, data in sse_payloads(fixture("anthropic_stream_cache.sse"))
    ]


def with_delta_usage(**usage: Any) -> bytes:
    """The fixture stream with its message_delta usage replaced."""
    events = stream_events()
    for name, payload in events:
        if name == "message_delta":
            payload["usage"] = usage
    return sse(*events)


# --- JSON bodies ------------------------------------------------------------------------------


def test_input_tokens_exclude_cache_reads_and_writes() -> None:
    usage = ANTHROPIC_MESSAGES.read_response(fixture_json("anthropic_message.json")).usage
    assert usage is not None
    assert usage.input_tokens == 48  # not 48 + 12000 + 3000
    assert usage.cache_read_tokens == 12000
    assert usage.prompt_tokens == 48 + 12000 + 3000


def test_cache_writes_are_split_by_ttl() -> None:
    reading = ANTHROPIC_MESSAGES.read_response(fixture_json("anthropic_message.json"))
    assert reading == Reading(
        Usage(
            input_tokens=48,
            cache_read_tokens=12000,
            cache_write_5m_tokens=1000,
            cache_write_1h_tokens=2000,
            output_tokens=410,
            web_search_requests=1,
        ),
        MODEL,
    )


def test_cache_write_total_without_breakdown_is_all_5m() -> None:
    body = fixture_json("anthropic_message.json")
    del body["usage"]["cache_creation"]
    usage = ANTHROPIC_MESSAGES.read_response(body).usage
    assert usage is not None
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (3000, 0)


def test_cache_write_breakdown_without_total_is_summed() -> None:
    body = fixture_json("anthropic_message.json")
    del body["usage"]["cache_creation_input_tokens"]
    usage = ANTHROPIC_MESSAGES.read_response(body).usage
    assert usage is not None
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (1000, 2000)


def test_thinking_tokens_are_reasoning_inside_output() -> None:
    reading = ANTHROPIC_MESSAGES.read_response(fixture_json("anthropic_message_thinking.json"))
    assert reading == Reading(
        Usage(input_tokens=30, output_tokens=1200, reasoning_tokens=900),
        "claude-opus-4-1-20250805",
    )


def test_body_without_usage_reads_as_none() -> None:
    body = fixture_json("anthropic_message.json")
    del body["usage"]
    assert ANTHROPIC_MESSAGES.read_response(body) == Reading(None, MODEL)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("input_tokens", "48"),
        ("cache_read_input_tokens", 1.5),
        ("cache_creation", {"ephemeral_1h_input_tokens": -1}),
        ("server_tool_use", "1"),
    ],
)
def test_wrongly_typed_usage_raises_a_clear_error(field: str, value: Any) -> None:
    body = fixture_json("anthropic_message.json")
    body["usage"][field] = value
    with pytest.raises(ValueError, match=f"anthropic.messages usage.{field}"):
        ANTHROPIC_MESSAGES.read_response(body)


# --- Streams ----------------------------------------------------------------------------------


def test_stream_reads_start_counts_and_final_output() -> None:
    reading = read_stream(ANTHROPIC_MESSAGES, fixture("anthropic_stream_cache.sse"))
    assert reading == STREAM_READING


def test_message_delta_repeating_cumulative_counts_is_not_double_counted() -> None:
    # The fixture's message_delta restates input and cache counts already in message_start.
    delta = next(p for name, p in stream_events() if name == "message_delta")
    assert delta["usage"]["input_tokens"] == 20
    assert delta["usage"]["cache_read_input_tokens"] == 6000
    reading = read_stream(ANTHROPIC_MESSAGES, fixture("anthropic_stream_cache.sse"))
    assert reading.usage is not None
    assert reading.usage.input_tokens == 20
    assert reading.usage.cache_read_tokens == 6000
    assert reading.usage.cache_write_5m_tokens == 1500


def test_later_cumulative_values_replace_earlier_ones() -> None:
    events = stream_events()
    delta = next(p for name, p in events if name == "message_delta")
    first = {"type": "message_delta", "delta": delta["delta"], "usage": {"output_tokens": 40}}
    delta["usage"] = {
        "input_tokens": 25,
        "cache_read_input_tokens": 6000,
        "output_tokens": 87,
        "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0},
    }
    stop = events.pop()
    events.insert(-1, ("message_delta", first))
    events.append(stop)
    usage = read_stream(ANTHROPIC_MESSAGES, sse(*events)).usage
    assert usage == Usage(
        input_tokens=25,
        cache_read_tokens=6000,
        cache_write_5m_tokens=1500,
        output_tokens=87,
        web_search_requests=2,
    )


def test_delta_updating_only_the_cache_write_total_keeps_the_1h_split() -> None:
    events = stream_events()
    start = events[0][1]["message"]["usage"]
    start["cache_creation"] = {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000}
    delta = next(p for name, p in events if name == "message_delta")
    delta["usage"]["cache_creation_input_tokens"] = 1800
    usage = read_stream(ANTHROPIC_MESSAGES, sse(*events)).usage
    assert usage is not None
    assert (usage.cache_write_5m_tokens, usage.cache_write_1h_tokens) == (800, 1000)


def test_stream_cut_before_message_delta_reads_as_none() -> None:
    # message_start's output_tokens is a placeholder: the caller must estimate, not trust it.
    data = sse(*(e for e in stream_events() if e[0] not in ("message_delta", "message_stop")))
    assert read_stream(ANTHROPIC_MESSAGES, data) == Reading(None, MODEL)


def test_stream_skips_unreadable_events() -> None:
    events = stream_events()
    bad_delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": "lots"}}
    events.insert(-1, ("message_delta", bad_delta))
    events.insert(-1, ("message_delta", "{truncated"))
    events.insert(1, ("error", {"type": "error", "error": {"type": "overloaded_error"}}))
    assert read_stream(ANTHROPIC_MESSAGES, sse(*events)) == STREAM_READING


def test_stream_parses_only_message_start_and_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    data = fixture("anthropic_stream_cache.sse")
    parsed = spy_json_loads(monkeypatch)
    read_stream(ANTHROPIC_MESSAGES, data)
    assert [payload["type"] for payload in parsed] == ["message_start", "message_delta"]


# --- Requests ---------------------------------------------------------------------------------


def test_requested_model_and_output_cap() -> None:
    body = {"model": MODEL, "max_tokens": 1024, "messages": []}
    assert ANTHROPIC_MESSAGES.requested_model(body) == MODEL
    assert ANTHROPIC_MESSAGES.requested_output_cap(body) == 1024
    assert ANTHROPIC_MESSAGES.requested_output_cap({"max_tokens": None}) is None


EPHEMERAL = {"type": "ephemeral"}
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}


def text_block(cache_control: Any = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": "hi"}
    if cache_control is not None:
        block["cache_control"] = cache_control
    return block


@pytest.mark.parametrize(
    ("body", "ttl"),
    [
        ({"system": "plain", "messages": [{"role": "user", "content": "hi"}]}, None),
        ({"messages": [{"role": "user", "content": [text_block()]}]}, None),
        ({"cache_control": EPHEMERAL, "messages": []}, "5m"),
        ({"cache_control": ONE_HOUR, "messages": []}, "1h"),
        ({"system": [text_block(EPHEMERAL)]}, "5m"),
        ({"system": [text_block({"type": "ephemeral", "ttl": "5m"})]}, "5m"),
        ({"tools": [{"name": "t", "input_schema": {}, "cache_control": ONE_HOUR}]}, "1h"),
        ({"system": [text_block(EPHEMERAL)], "tools": [{"cache_control": ONE_HOUR}]}, "1h"),
        ({"messages": [{"role": "user", "content": [text_block(ONE_HOUR)]}]}, "1h"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "toolu_1",
                                "content": [text_block(ONE_HOUR)],
                            }
                        ],
                    }
                ]
            },
            "1h",
        ),
    ],
)
def test_requested_cache_ttl(body: dict[str, Any], ttl: str | None) -> None:
    assert ANTHROPIC_MESSAGES.requested_cache_ttl(body) == ttl


# --- The fixtures are what the SDK parses -----------------------------------------------------


@pytest.mark.parametrize("name", ["anthropic_message.json", "anthropic_message_thinking.json"])
def test_message_fixture_validates_against_the_sdk(name: str) -> None:
    assert unknown_fields(Message.model_validate_json(fixture(name))) == []


def test_stream_fixture_validates_against_the_sdk() -> None:
    adapter: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)
    for name, payload in sse_payloads(fixture("anthropic_stream_cache.sse")):
        if name == "ping":  # not in the SDK's event union: its stream loop drops pings
            continue
        event = adapter.validate_json(payload)
        assert event.type == name
        assert unknown_fields(event) == []
