"""Google Gemini ``generateContent`` and ``streamGenerateContent?alt=sse`` (Gemini API, Vertex)."""

from __future__ import annotations

from collections.abc import Mapping

from nullspend.usage import Usage
from nullspend.wire._json import count, items, parse_object, request_int, section, text
from nullspend.wire.base import JSONObject, Reading, SideCall, StreamAccumulator
from nullspend.wire.sse import SSEAccumulator, SSEEvent

_WHERE = "gemini usageMetadata"


def _audio(usage: JSONObject, key: str) -> int:
    """The AUDIO entry of a per-modality breakdown (a list of ``{modality, tokenCount}``)."""
    where = f"{_WHERE}.{key}[]"
    return sum(
        count(entry, "tokenCount", where)
        for entry in items(usage, key, _WHERE)
        if isinstance(entry, Mapping) and entry.get("modality") == "AUDIO"
    )


def _usage_from(usage: JSONObject) -> Usage:
    """Map ``usageMetadata``: the prompt count includes the cache, the candidates exclude thoughts.

    Thoughts are billed as output, and tool-use prompt tokens (search or code results fed back to
    the model) as input. Audio is split out of both sides; cached audio is counted once, as a
    cache read, since the prompt's AUDIO entry includes it just as the prompt includes the cache.
    """
    cached = count(usage, "cachedContentTokenCount", _WHERE)
    audio_in = max(0, _audio(usage, "promptTokensDetails") - _audio(usage, "cacheTokensDetails"))
    audio_out = _audio(usage, "candidatesTokensDetails")
    prompt = count(usage, "promptTokenCount", _WHERE) + count(
        usage, "toolUsePromptTokenCount", _WHERE
    )
    thoughts = count(usage, "thoughtsTokenCount", _WHERE)
    output = max(0, count(usage, "candidatesTokenCount", _WHERE) - audio_out) + thoughts
    return Usage(
        input_tokens=max(0, prompt - cached - audio_in),
        cache_read_tokens=cached,
        output_tokens=output,
        reasoning_tokens=thoughts,
        audio_input_tokens=audio_in,
        audio_output_tokens=audio_out,
    )


def _reading(body: JSONObject) -> Reading:
    usage = section(body, "usageMetadata", "gemini response")
    return Reading(_usage_from(usage) if usage else None, text(body, "modelVersion"))


class _GenerateContentStream(SSEAccumulator):
    def _on_event(self, event: SSEEvent) -> None:
        # Each chunk is a whole GenerateContentResponse whose usageMetadata is cumulative so far,
        # so the last readable one wins; chunks without it only need parsing for the model.
        if self._model is not None and "usageMetadata" not in event.data:
            return
        reading = _reading(parse_object(event.data))
        self._usage = reading.usage or self._usage
        self._model = reading.model or self._model


class Gemini:
    name = "gemini.generate_content"
    provider = "google"

    def read_response(self, body: JSONObject) -> Reading:
        return _reading(body)

    def stream(self) -> StreamAccumulator:
        return _GenerateContentStream()

    def requested_model(self, body: JSONObject) -> str | None:
        return None  # the model is in the URL path, not the body

    def requested_output_cap(self, body: JSONObject) -> int | None:
        # The API reads proto JSON, which accepts snake_case field names as well as camelCase.
        config = body.get("generationConfig", body.get("generation_config"))
        if not isinstance(config, Mapping):
            return None
        cap = request_int(config, "maxOutputTokens")
        return cap if cap is not None else request_int(config, "max_output_tokens")

    def requested_choices(self, body: JSONObject) -> int:
        config = body.get("generationConfig", body.get("generation_config"))
        if not isinstance(config, Mapping):
            return 1
        count = request_int(config, "candidateCount")
        return count or request_int(config, "candidate_count") or 1

    def continues_stored_context(self, body: JSONObject) -> bool:
        return False

    def requested_service_tier(self, body: JSONObject) -> str | None:
        return None  # the catalog prices no Gemini processing tier apart

    def requested_web_searches(self, body: JSONObject) -> int:
        return 0  # the catalog prices no grounding apart

    def hidden_input_tokens(self, body: JSONObject) -> int:
        return 0  # Google documents no hidden prompt

    def requests_audio_output(self, body: JSONObject) -> bool:
        return False  # the catalog prices no Gemini audio output apart

    def requested_side_calls(self, body: JSONObject) -> tuple[SideCall, ...]:
        return ()

    def requested_cache_ttl(self, body: JSONObject) -> str | None:
        # Implicit caching has no write charge; explicit caches are created (and billed for
        # storage) through the cachedContents API, not by a generateContent request.
        return None


GEMINI = Gemini()
