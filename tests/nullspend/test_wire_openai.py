"""OpenAI Chat Completions and Responses API: usage mapping, streams, requests, SDK fidelity."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from nullspend.usage import Usage
from nullspend.wire import OPENAI_CHAT, OPENAI_RESPONSES, Reading
from tests.nullspend.wire_testing import (
    fixture,
    fixture_json,
    read_stream,
    spy_json_loads,
    sse,
    sse_payloads,
    unknown_fields,
)

# Fields the newest SDK declares but the workspace's pinned SDK does not know yet.
NEWER_THAN_PINNED_SDK = {"obfuscation"}


def chat_usage(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "object": "chat.completion", "usage": fields}


# --- Chat Completions: JSON bodies ------------------------------------------------------------


def test_chat_prompt_tokens_include_cached_tokens() -> None:
    reading = OPENAI_CHAT.read_response(fixture_json("openai_chat.json"))
    assert reading.model == "o4-mini-2025-04-16"
    assert reading.usage is not None
    assert reading.usage.input_tokens == 2048 - 1536
    assert reading.usage.cache_read_tokens == 1536
    assert reading.usage.prompt_tokens == 2048


def test_chat_reasoning_tokens_stay_inside_output() -> None:
    usage = OPENAI_CHAT.read_response(fixture_json("openai_chat.json")).usage
    assert usage is not None
    assert (usage.output_tokens, usage.reasoning_tokens) == (730, 512)


def test_chat_cache_write_tokens_are_honoured() -> None:
    usage = OPENAI_CHAT.read_response(fixture_json("openai_chat_cache_write.json")).usage
    assert usage == Usage(
        input_tokens=6000 - 2048 - 3072,
        cache_read_tokens=2048,
        cache_write_5m_tokens=3072,
        output_tokens=120,
    )


def test_chat_audio_is_split_out_of_both_sides() -> None:
    usage = OPENAI_CHAT.read_response(fixture_json("openai_chat_audio.json")).usage
    assert usage == Usage(
        input_tokens=40, audio_input_tokens=80, output_tokens=50, audio_output_tokens=300
    )


def test_chat_inconsistent_breakdown_clamps_at_zero() -> None:
    body = chat_usage(
        prompt_tokens=10,
        completion_tokens=5,
        prompt_tokens_details={"cached_tokens": 20},
        completion_tokens_details={"reasoning_tokens": 9},
    )
    usage = OPENAI_CHAT.read_response(body).usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (0, 5, 5)


def test_chat_null_details_read_as_zero() -> None:
    body = chat_usage(
        prompt_tokens=7,
        completion_tokens=3,
        prompt_tokens_details=None,
        completion_tokens_details={"reasoning_tokens": None},
    )
    assert OPENAI_CHAT.read_response(body).usage == Usage(input_tokens=7, output_tokens=3)


def test_chat_body_without_usage_reads_as_none() -> None:
    body = fixture_json("openai_chat.json")
    del body["usage"]
    assert OPENAI_CHAT.read_response(body) == Reading(None, "o4-mini-2025-04-16", "default")


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"prompt_tokens": "12", "completion_tokens": 1}, "usage.prompt_tokens"),
        ({"prompt_tokens": 12, "completion_tokens": 1.0}, "usage.completion_tokens"),
        ({"prompt_tokens": True, "completion_tokens": 1}, "usage.prompt_tokens"),
        ({"prompt_tokens": -3, "completion_tokens": 1}, "usage.prompt_tokens"),
        (
            {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": "0"}},
            "prompt_tokens_details.cached_tokens",
        ),
        ({"prompt_tokens": 1, "completion_tokens_details": [1]}, "completion_tokens_details"),
    ],
)
def test_chat_wrongly_typed_usage_raises_a_clear_error(usage: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OPENAI_CHAT.read_response({"model": "gpt-4o", "usage": usage})


def test_chat_usage_that_is_not_an_object_raises() -> None:
    with pytest.raises(ValueError, match="usage must be an object"):
        OPENAI_CHAT.read_response({"model": "gpt-4o", "usage": 12})


# --- Chat Completions: streams ----------------------------------------------------------------

CHAT_STREAM_READING = Reading(
    Usage(input_tokens=1200 - 1024, cache_read_tokens=1024, output_tokens=9),
    "gpt-4o-mini-2024-07-18",
    "default",
)


def test_chat_stream_reads_the_final_usage_chunk() -> None:
    assert read_stream(OPENAI_CHAT, fixture("openai_chat_stream.sse")) == CHAT_STREAM_READING


def test_chat_stream_without_usage_reads_as_none() -> None:
    reading = read_stream(OPENAI_CHAT, fixture("openai_chat_stream_no_usage.sse"))
    assert reading == Reading(None, "gpt-4o-mini-2024-07-18")


def test_chat_stream_parses_only_the_first_chunk_and_the_usage_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed = spy_json_loads(monkeypatch)
    assert read_stream(OPENAI_CHAT, fixture("openai_chat_stream.sse")) == CHAT_STREAM_READING
    assert len(parsed) == 2
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert parsed[1]["choices"] == []


def test_chat_stream_takes_the_model_from_the_first_chunk_naming_one() -> None:
    # Azure OpenAI opens with a prompt-filter chunk whose model is empty.
    azure_first = {"choices": [], "created": 0, "id": "", "model": "", "object": ""}
    data = sse((None, azure_first)) + fixture("openai_chat_stream.sse")
    assert read_stream(OPENAI_CHAT, data) == CHAT_STREAM_READING


def test_chat_stream_skips_malformed_chunks() -> None:
    good = fixture("openai_chat_stream.sse")
    data = sse((None, "{not json"), (None, '{"usage": {"prompt_tokens": "x"}}')) + good
    data += sse((None, '{"model": "m", "usage": {"prompt_tokens": -1}}'), (None, "[1, 2]"))
    assert read_stream(OPENAI_CHAT, data) == CHAT_STREAM_READING


def test_chat_stream_cut_before_usage_reads_as_none() -> None:
    data = fixture("openai_chat_stream.sse")
    cut = data.index(b'"choices":[],"usage"')
    assert read_stream(OPENAI_CHAT, data[:cut]) == Reading(None, "gpt-4o-mini-2024-07-18")


# --- Chat Completions: requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"max_completion_tokens": 500, "max_tokens": 100}, 500),
        ({"max_completion_tokens": None, "max_tokens": 100}, 100),
        ({"max_tokens": 100}, 100),
        ({}, None),
        ({"max_tokens": "100"}, None),
    ],
)
def test_chat_requested_output_cap(body: dict[str, Any], cap: int | None) -> None:
    assert OPENAI_CHAT.requested_output_cap(body) == cap


@pytest.mark.parametrize(("n", "choices"), [(None, 1), (0, 1), (4, 4), (128, 128), (10**15, 128)])
def test_chat_requested_choices_are_at_most_what_openai_gives(n: int | None, choices: int) -> None:
    assert OPENAI_CHAT.requested_choices({"n": n}) == choices


def test_chat_requested_model_and_cache_ttl() -> None:
    body = {"model": "gpt-4o", "messages": [], "prompt_cache_key": "k"}
    assert OPENAI_CHAT.requested_model(body) == "gpt-4o"
    assert OPENAI_CHAT.requested_model({}) is None
    assert OPENAI_CHAT.requested_cache_ttl(body) is None


@pytest.mark.parametrize(
    ("body", "speech"),
    [
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy"}}, True),
        ({"modalities": ["audio"]}, True),
        ({"audio": {"voice": "alloy", "format": "wav"}}, True),
        ({"modalities": ["text"]}, False),
        ({"modalities": "audio", "audio": None}, False),  # malformed: the provider refuses it
        ({}, False),
    ],
)
def test_chat_requests_audio_output(body: dict[str, Any], speech: bool) -> None:
    assert OPENAI_CHAT.requests_audio_output(body) is speech
    assert OPENAI_RESPONSES.requests_audio_output(body) is False


# --- Responses API: JSON bodies ---------------------------------------------------------------


def test_responses_input_includes_cached_and_output_includes_reasoning() -> None:
    reading = OPENAI_RESPONSES.read_response(fixture_json("openai_responses.json"))
    assert reading.model == "gpt-5-2025-08-07"
    assert reading.usage is not None
    assert reading.usage.input_tokens == 3100 - 1024
    assert reading.usage.cache_read_tokens == 1024
    assert (reading.usage.output_tokens, reading.usage.reasoning_tokens) == (900, 640)


def test_responses_counts_web_search_calls_but_not_page_visits() -> None:
    usage = OPENAI_RESPONSES.read_response(fixture_json("openai_responses.json")).usage
    assert usage is not None
    assert usage.web_search_requests == 2  # two "search" actions; the "open_page" is not billed


def test_responses_tool_usage_count_wins_when_reported() -> None:
    body = fixture_json("openai_responses.json")
    body["tool_usage"] = {
        "image_gen": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        "web_search": {"num_requests": 1},
    }
    usage = OPENAI_RESPONSES.read_response(body).usage
    assert usage is not None
    assert usage.web_search_requests == 1


def test_responses_cache_write_tokens_are_honoured() -> None:
    body = fixture_json("openai_responses.json")
    body["usage"]["input_tokens_details"]["cache_write_tokens"] = 2000
    usage = OPENAI_RESPONSES.read_response(body).usage
    assert usage is not None
    assert (usage.input_tokens, usage.cache_write_5m_tokens) == (3100 - 1024 - 2000, 2000)


def test_responses_body_without_usage_reads_as_none() -> None:
    body = fixture_json("openai_responses.json")
    body["usage"] = None
    assert OPENAI_RESPONSES.read_response(body) == Reading(None, "gpt-5-2025-08-07", "default")


def test_responses_wrongly_typed_usage_raises_a_clear_error() -> None:
    body = fixture_json("openai_responses.json")
    body["usage"]["output_tokens_details"]["reasoning_tokens"] = "640"
    with pytest.raises(ValueError, match=r"output_tokens_details\.reasoning_tokens"):
        OPENAI_RESPONSES.read_response(body)


# --- Responses API: streams -------------------------------------------------------------------

RESPONSES_STREAM_READING = Reading(
    Usage(input_tokens=1840 - 1536, cache_read_tokens=1536, output_tokens=12),
    "gpt-5-2025-08-07",
    "default",
)


def _responses_events() -> list[tuple[str | None, str]]:
    return sse_payloads(fixture("openai_responses_stream.sse"))


def test_responses_stream_reads_the_completed_event() -> None:
    data = fixture("openai_responses_stream.sse")
    assert read_stream(OPENAI_RESPONSES, data) == RESPONSES_STREAM_READING


def test_responses_stream_parses_only_created_and_terminal_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed = spy_json_loads(monkeypatch)
    read_stream(OPENAI_RESPONSES, fixture("openai_responses_stream.sse"))
    assert [payload["type"] for payload in parsed] == ["response.created", "response.completed"]


@pytest.mark.parametrize("terminal", ["response.incomplete", "response.failed"])
def test_responses_stream_reads_any_terminal_event(terminal: str) -> None:
    events = _responses_events()
    name, payload = events[-1]
    assert name == "response.completed"
    payload = payload.replace('"response.completed"', f'"{terminal}"')
    data = sse(*events[:-1], (terminal, payload))
    assert read_stream(OPENAI_RESPONSES, data) == RESPONSES_STREAM_READING


def test_responses_stream_terminal_event_without_usage_reads_as_none() -> None:
    events = _responses_events()
    failed = json.loads(events[-1][1])
    failed["type"] = "response.failed"
    failed["response"]["usage"] = None
    data = sse(*events[:-1], ("response.failed", failed))
    assert read_stream(OPENAI_RESPONSES, data) == Reading(None, "gpt-5-2025-08-07", "default")


def test_responses_stream_cut_before_the_terminal_event_reads_as_none() -> None:
    data = sse(*_responses_events()[:-1])
    assert read_stream(OPENAI_RESPONSES, data) == Reading(None, "gpt-5-2025-08-07")


def test_responses_stream_without_event_names_is_read_from_the_payload_type() -> None:
    data = sse(*((None, payload) for _, payload in _responses_events()))
    assert read_stream(OPENAI_RESPONSES, data) == RESPONSES_STREAM_READING


# --- Responses API: requests ------------------------------------------------------------------


def test_responses_requests() -> None:
    body = {"model": "gpt-5", "input": "hi", "max_output_tokens": 2048}
    assert OPENAI_RESPONSES.requested_model(body) == "gpt-5"
    assert OPENAI_RESPONSES.requested_output_cap(body) == 2048
    assert OPENAI_RESPONSES.requested_output_cap({"max_tokens": 10}) is None
    assert OPENAI_RESPONSES.requested_cache_ttl(body) is None


@pytest.mark.parametrize(
    ("fields", "stored"),
    [
        ({"previous_response_id": "resp_1"}, True),
        ({"conversation": {"id": "conv_1"}}, True),
        ({"prompt": {"id": "pmpt_1"}}, True),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, True),
        ({"prompt": {"id": ""}}, False),
        ({"prompt": "pmpt_1"}, False),  # malformed: the provider refuses it
        ({"input": [{"type": "message", "role": "user", "content": "hi"}]}, False),
        ({"input": "item_reference"}, False),
    ],
)
def test_responses_stored_context(fields: dict[str, Any], stored: bool) -> None:
    body = {"model": "gpt-5", **fields}
    assert OPENAI_RESPONSES.continues_stored_context(body) is stored


# --- Service tiers: the one an answer names and the one a request asks for -----------------


@pytest.mark.parametrize("tier", ["default", "priority", "flex", "scale"])
def test_the_service_tier_an_answer_was_served_in_is_read(tier: str) -> None:
    """Read as the answer names it; ``PricedModel.serving`` prices it."""
    chat = {**fixture_json("openai_chat.json"), "service_tier": tier}
    assert OPENAI_CHAT.read_response(chat).service_tier == tier
    response = {**fixture_json("openai_responses.json"), "service_tier": tier}
    assert OPENAI_RESPONSES.read_response(response).service_tier == tier
    named = f'"service_tier":"{tier}"'.encode()
    streams = (
        (OPENAI_CHAT, "openai_chat_stream.sse"),
        (OPENAI_RESPONSES, "openai_responses_stream.sse"),
    )
    for wire, name in streams:
        data = fixture(name).replace(b'"service_tier":"default"', named)
        reading = read_stream(wire, data, cuts=list(range(7, len(data), 97)))
        assert (reading.service_tier, reading.usage is not None) == (tier, True)


@pytest.mark.parametrize(
    ("asked", "read"), [("fast", "fast"), ("flex", "flex"), (None, None), (3, None)]
)
def test_the_service_tier_a_request_asks_for_is_read(asked: object, read: str | None) -> None:
    for wire in (OPENAI_CHAT, OPENAI_RESPONSES):
        assert wire.requested_service_tier({"model": "gpt-5", "service_tier": asked}) == read


# --- The fixtures are what the SDK parses -----------------------------------------------------


@pytest.mark.parametrize(
    "name", ["openai_chat.json", "openai_chat_cache_write.json", "openai_chat_audio.json"]
)
def test_chat_fixture_validates_against_the_sdk(name: str) -> None:
    model = ChatCompletion.model_validate_json(fixture(name))
    assert unknown_fields(model) == []


@pytest.mark.parametrize("name", ["openai_chat_stream.sse", "openai_chat_stream_no_usage.sse"])
def test_chat_stream_fixture_validates_against_the_sdk(name: str) -> None:
    for _, payload in sse_payloads(fixture(name)):
        if payload != "[DONE]":
            chunk = ChatCompletionChunk.model_validate_json(payload)
            unknown = {field.rsplit(".", 1)[-1] for field in unknown_fields(chunk)}
            assert unknown <= NEWER_THAN_PINNED_SDK


def test_responses_fixture_validates_against_the_sdk() -> None:
    model = Response.model_validate_json(fixture("openai_responses.json"))
    assert unknown_fields(model) == []


def test_responses_stream_fixture_validates_against_the_sdk() -> None:
    adapter: TypeAdapter[ResponseStreamEvent] = TypeAdapter(ResponseStreamEvent)
    for name, payload in _responses_events():
        event = adapter.validate_json(payload)
        assert event.type == name
        assert unknown_fields(event) == []
