"""Google Gemini generateContent: usageMetadata mapping, cumulative streams, requests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nullspend.usage import Usage
from nullspend.wire import GEMINI, Reading
from tests.nullspend.wire_testing import fixture, fixture_json, read_stream, sse, sse_payloads

MODEL = "gemini-2.5-flash"


def metadata(**fields: Any) -> dict[str, Any]:
    return {"candidates": [], "modelVersion": MODEL, "usageMetadata": fields}


def test_prompt_includes_cache_and_thoughts_are_output() -> None:
    reading = GEMINI.read_response(fixture_json("gemini.json"))
    assert reading == Reading(
        Usage(
            input_tokens=1500 + 20 - 1024,  # the tool-use prompt is input too
            cache_read_tokens=1024,
            output_tokens=200 + 700,
            reasoning_tokens=700,
        ),
        MODEL,
    )


def test_total_token_count_is_preserved() -> None:
    body = fixture_json("gemini.json")
    usage = GEMINI.read_response(body).usage
    assert usage is not None
    assert usage.total_tokens == body["usageMetadata"]["totalTokenCount"]


def test_audio_is_split_out_and_cached_audio_counted_once() -> None:
    body = metadata(
        promptTokenCount=500,
        cachedContentTokenCount=150,
        candidatesTokenCount=330,
        promptTokensDetails=[
            {"modality": "TEXT", "tokenCount": 100},
            {"modality": "AUDIO", "tokenCount": 400},
        ],
        cacheTokensDetails=[{"modality": "AUDIO", "tokenCount": 150}],
        candidatesTokensDetails=[
            {"modality": "TEXT", "tokenCount": 30},
            {"modality": "AUDIO", "tokenCount": 300},
        ],
    )
    usage = GEMINI.read_response(body).usage
    assert usage == Usage(
        input_tokens=100,
        cache_read_tokens=150,
        audio_input_tokens=250,
        output_tokens=30,
        audio_output_tokens=300,
    )
    assert usage.prompt_tokens == 500


def test_body_without_usage_reads_as_none() -> None:
    body = fixture_json("gemini.json")
    del body["usageMetadata"]
    assert GEMINI.read_response(body) == Reading(None, MODEL)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"promptTokenCount": "12"}, "promptTokenCount"),
        ({"thoughtsTokenCount": 1.0}, "thoughtsTokenCount"),
        ({"promptTokensDetails": {"AUDIO": 3}}, "promptTokensDetails must be a list"),
        (
            {"promptTokensDetails": [{"modality": "AUDIO", "tokenCount": -4}]},
            r"promptTokensDetails\[\]\.tokenCount",
        ),
    ],
)
def test_wrongly_typed_usage_raises_a_clear_error(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GEMINI.read_response(metadata(**fields))


# --- Streams ----------------------------------------------------------------------------------

STREAM_READING = Reading(Usage(input_tokens=12, output_tokens=14 + 30, reasoning_tokens=30), MODEL)


def test_stream_cumulative_usage_last_wins() -> None:
    assert read_stream(GEMINI, fixture("gemini_stream.sse")) == STREAM_READING


def test_stream_fixture_is_crlf_terminated() -> None:
    data = fixture("gemini_stream.sse")
    assert data.count(b"\r\n\r\n") == 3
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_stream_keeps_the_last_readable_usage() -> None:
    chunks = [json.loads(payload) for _, payload in sse_payloads(fixture("gemini_stream.sse"))]
    bad = {**chunks[-1], "usageMetadata": {"promptTokenCount": "12"}}
    data = sse(*((None, chunk) for chunk in chunks), (None, bad), (None, '{"usageMetadata": {'))
    assert read_stream(GEMINI, data) == STREAM_READING


def test_stream_without_usage_reads_as_none() -> None:
    chunk = {"candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"}}]}
    data = sse((None, {**chunk, "modelVersion": MODEL}), (None, chunk))
    assert read_stream(GEMINI, data) == Reading(None, MODEL)


# --- Requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "cap"),
    [
        ({"contents": [], "generationConfig": {"maxOutputTokens": 256}}, 256),
        ({"contents": [], "generation_config": {"max_output_tokens": 128}}, 128),
        ({"contents": [], "generationConfig": {"temperature": 0.2}}, None),
        ({"contents": [], "generationConfig": "bad"}, None),
        ({"contents": []}, None),
    ],
)
def test_requested_output_cap(body: dict[str, Any], cap: int | None) -> None:
    assert GEMINI.requested_output_cap(body) == cap


def test_model_and_cache_ttl_are_not_in_the_body() -> None:
    body = {"model": "ignored", "contents": [], "cachedContent": "cachedContents/abc"}
    assert GEMINI.requested_model(body) is None
    assert GEMINI.requested_cache_ttl(body) is None
