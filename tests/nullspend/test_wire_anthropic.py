"""Anthropic Messages: usage mapping, cumulative stream deltas, cache TTLs, SDK fidelity."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.beta import BetaMessage, BetaRawMessageStreamEvent
from pydantic import TypeAdapter

from nullspend.pricing import default_catalog, parts_picodollars
from nullspend.usage import Usage
from nullspend.wire import ANTHROPIC_MESSAGES, Reading
from nullspend.wire.base import PricedPart
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


# --- usage.iterations: compaction, the advisor, a server-side fallback ------------------------


def iteration(kind: str, input_tokens: int, output_tokens: int, **more: Any) -> dict[str, Any]:
    """One ``usage.iterations`` entry, as ``BetaIterationsUsage`` shapes it."""
    return {
        "type": kind,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_input_tokens": more.pop("cache_read", 0),
        "cache_creation_input_tokens": more.pop("cache_write", 0),
        **more,
    }


# The compaction docs' own example: the top level is the answer after the summary; the summary
# read the whole 180,000-token context, which the top level leaves out.
COMPACTED = {
    "input_tokens": 23000,
    "output_tokens": 1000,
    "iterations": [iteration("compaction", 180000, 3500), iteration("message", 23000, 1000)],
}
ADVISOR = "claude-opus-4-8"
ADVISED = {  # an executor's two turns around an advisor call: the top level sums the turns
    "input_tokens": 3000,
    "output_tokens": 900,
    "cache_read_input_tokens": 40000,
    "iterations": [
        iteration("message", 1000, 300, cache_read=20000),
        iteration("advisor_message", 21000, 1600, model=ADVISOR, cache_write=500),
        iteration("message", 2000, 600, cache_read=20000),
    ],
}


def message_with(usage: dict[str, Any], model: str = MODEL) -> dict[str, Any]:
    body = fixture_json("anthropic_message.json")
    body["usage"] = usage
    body["model"] = model
    return body


def test_compaction_iterations_are_billed_besides_the_top_level_counts() -> None:
    reading = ANTHROPIC_MESSAGES.read_response(message_with(COMPACTED))
    assert reading == Reading(
        Usage(input_tokens=23000, output_tokens=1000),
        MODEL,
        extra=(PricedPart(MODEL, Usage(input_tokens=180000, output_tokens=3500)),),
    )
    assert reading.billed_usage() == Usage(input_tokens=203000, output_tokens=4500)
    # Each pass at the model's rates (Sonnet 4.5: $3 in, $15 out): 0.609 + 0.0675 = $0.6765.
    priced = default_catalog().resolve(MODEL)
    assert priced is not None
    assert reading.usage is not None
    assert parts_picodollars(reading.usage, priced, reading.extra) == 676_500 * 10**6


def test_advisor_iterations_are_billed_at_the_advisor_model() -> None:
    reading = ANTHROPIC_MESSAGES.read_response(message_with(ADVISED))
    assert reading.usage == Usage(input_tokens=3000, cache_read_tokens=40000, output_tokens=900)
    assert reading.extra == (
        PricedPart(
            ADVISOR, Usage(input_tokens=21000, cache_write_5m_tokens=500, output_tokens=1600)
        ),
    )
    catalog = default_catalog()
    executor, advisor = catalog.resolve(MODEL), catalog.resolve(ADVISOR)
    assert executor is not None
    assert advisor is not None
    assert reading.usage is not None
    by_hand = (
        3000 * executor.prices.input
        + 40000 * executor.prices.cache_read
        + 900 * executor.prices.output
        + 21000 * advisor.prices.input
        + 500 * advisor.prices.cache_write_5m
        + 1600 * advisor.prices.output
    )
    assert parts_picodollars(reading.usage, executor, reading.extra) == by_hand


def test_an_advisor_of_an_unpriced_model_leaves_the_call_unpriced() -> None:
    usage = {**ADVISED, "iterations": [iteration("advisor_message", 10, 10, model="no-such")]}
    reading = ANTHROPIC_MESSAGES.read_response(message_with(usage))
    priced = default_catalog().resolve(MODEL)
    assert priced is not None
    assert reading.usage is not None
    assert parts_picodollars(reading.usage, priced, reading.extra) is None


def test_a_fallback_served_answer_is_billed_at_the_serving_model() -> None:
    # The top level counts the serving model's attempt (a fallback_message takes the place of
    # the message entry); the answer may still name the model asked for.
    usage = {
        "input_tokens": 500,
        "output_tokens": 200,
        "iterations": [iteration("fallback_message", 500, 200, model="claude-opus-4-8")],
    }
    reading = ANTHROPIC_MESSAGES.read_response(message_with(usage, "claude-fable-5"))
    assert reading == Reading(Usage(input_tokens=500, output_tokens=200), "claude-opus-4-8")


def test_compaction_is_billed_at_the_model_asked_for_when_a_fallback_served() -> None:
    """Compaction runs on the request's model; a fallback that then served the answer made it
    priced at the fallback's (180,000 Opus tokens priced as Haiku's)."""
    usage = {
        "input_tokens": 500,
        "output_tokens": 200,
        "iterations": [
            iteration("compaction", 180000, 3500),
            iteration("fallback_message", 500, 200, model="claude-haiku-4-5"),
        ],
    }
    reading = ANTHROPIC_MESSAGES.read_response(message_with(usage, "claude-opus-4-8"))
    assert reading.model == "claude-haiku-4-5"
    assert [part.model for part in reading.extra] == ["claude-opus-4-8"]


def test_message_and_unknown_iterations_add_nothing() -> None:
    usage = {
        "input_tokens": 30,
        "output_tokens": 5,
        "iterations": [iteration("message", 30, 5), iteration("some_future_kind", 99, 99)],
    }
    reading = ANTHROPIC_MESSAGES.read_response(message_with(usage))
    assert reading == Reading(Usage(input_tokens=30, output_tokens=5), MODEL)


@pytest.mark.parametrize(
    ("iterations", "where"),
    [
        ("lots", "usage.iterations"),
        (["x"], r"usage.iterations\[0\]"),
        ([iteration("compaction", -1, 0)], r"usage.iterations\[0\].input_tokens"),
    ],
)
def test_unreadable_iterations_raise_a_clear_error(iterations: Any, where: str) -> None:
    usage = {"input_tokens": 1, "output_tokens": 1, "iterations": iterations}
    with pytest.raises(ValueError, match=f"anthropic.messages {where}"):
        ANTHROPIC_MESSAGES.read_response(message_with(usage))


def test_stream_reads_the_iterations_of_the_last_delta() -> None:
    # The SDK's BetaMessageDeltaUsage carries the iterations; message_start's may carry none.
    data = with_delta_usage(**COMPACTED)
    reading = read_stream(ANTHROPIC_MESSAGES, data)
    assert reading.usage is not None
    assert reading.usage.output_tokens == 1000
    assert reading.extra == (PricedPart(MODEL, Usage(input_tokens=180000, output_tokens=3500)),)
    fallback = {
        "output_tokens": 87,
        "iterations": [iteration("fallback_message", 20, 87, model="claude-opus-4-8")],
    }
    assert read_stream(ANTHROPIC_MESSAGES, with_delta_usage(**fallback)).model == (
        "claude-opus-4-8"
    )


def test_iteration_shapes_validate_against_the_sdk() -> None:
    for usage in (COMPACTED, ADVISED):
        assert unknown_fields(BetaMessage.model_validate(message_with(usage))) == []
    adapter: TypeAdapter[BetaRawMessageStreamEvent] = TypeAdapter(BetaRawMessageStreamEvent)
    for name, payload in sse_payloads(with_delta_usage(**ADVISED)):
        if name != "ping":
            assert unknown_fields(adapter.validate_json(payload)) == []


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
