"""The contract every provider wire format implements."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from nullspend.usage import Usage, sum_usage

JSONObject = Mapping[str, Any]

ASSUMED_WEB_SEARCHES = 5
"""The searches a web search tool that sets no limit is assumed to make in one call: an
estimate must bound ordinary calls from above, and a search costs more than most calls'
tokens."""


def web_searches_allowed(body: JSONObject, is_search: Callable[[object], bool]) -> int:
    """The searches the request's search tools (those ``is_search(type)`` picks) may make:
    each tool's ``max_uses`` where it sets one, else ``ASSUMED_WEB_SEARCHES``."""
    tools = body.get("tools")
    if not isinstance(tools, list):
        return 0
    allowed = 0
    for tool in tools:
        if isinstance(tool, Mapping) and is_search(tool.get("type")):
            limit = tool.get("max_uses")
            allowed += limit if type(limit) is int and limit > 0 else ASSUMED_WEB_SEARCHES
    return allowed


class PricedPart(NamedTuple):
    """Usage a call bills besides its own, at ``model`` (None: the call's own model)."""

    model: str | None
    usage: Usage


class SideCall(NamedTuple):
    """An inference the provider runs inside a request besides the call itself (Anthropic's
    context compaction, its advisor tool), billed apart: what an estimate must reserve too."""

    model: str | None
    """The model it runs on; None: the request's own."""
    calls: int
    """The most times it may run in one request."""
    output_cap: int | None
    """The most output tokens one run may bill; None: the model's output cap."""
    min_input_tokens: int = 0
    """It runs only once the prompt reaches this many tokens (compaction's trigger)."""
    cache_ttl: str | None = None
    """``"5m"`` or ``"1h"`` when each run writes its prompt to the cache (priced as a write)."""


@dataclass(slots=True)  # not frozen: frozen init costs ~0.3 us, and this is built per call
class Reading:
    """What a response, or a whole stream, says about its own cost.

    ``usage`` is None when the response carried no usage at all (a stream cut short, an OpenAI
    chat stream without ``stream_options.include_usage``): the caller must then fall back to an
    estimate, never to zero. ``model`` is the model as the provider reported it;
    ``service_tier`` the processing tier it says it was served in (OpenAI's "default",
    "priority", "flex"...), which ``PricedModel.serving`` prices. ``extra`` is usage billed
    besides ``usage`` that it does not include, each part at its own model (Anthropic's
    compaction and advisor iterations): ``pricing.parts_picodollars`` prices them all.
    """

    usage: Usage | None
    model: str | None
    service_tier: str | None = None
    extra: tuple[PricedPart, ...] = ()

    def billed_usage(self) -> Usage | None:
        """Every token the call bills, ``usage`` and the extra parts added: what a cost event
        records (its cost prices each part at its own model)."""
        if not self.extra or self.usage is None:
            return self.usage
        return sum_usage(self.usage, *(part.usage for part in self.extra))


NO_READING = Reading(None, None)
"""A response that said nothing of its cost: charged its estimate. Shared, never changed."""


class StreamAccumulator(Protocol):
    """Consumes a response's raw SSE bytes, in any split, and yields the final reading."""

    def feed(self, chunk: bytes) -> None: ...

    def finish(self) -> Reading: ...


class WireFormat(Protocol):
    """One provider API's request and response format: the only place that knows its fields."""

    name: str
    """Stable identifier, e.g. ``openai.chat``."""
    provider: str
    """``openai``, ``anthropic`` or ``google``."""

    def read_response(self, body: JSONObject) -> Reading:
        """Usage and model from a complete (non-streamed) JSON response body."""
        ...

    def stream(self) -> StreamAccumulator:
        """A fresh accumulator for one streamed response."""
        ...

    def requested_model(self, body: JSONObject) -> str | None:
        """The model a request body asks for."""
        ...

    def requested_output_cap(self, body: JSONObject) -> int | None:
        """The output-token ceiling a request body sets (max_tokens and its variants), if any."""
        ...

    def requested_choices(self, body: JSONObject) -> int:
        """How many completions a request asks for (OpenAI's ``n``, Gemini's ``candidateCount``):
        each may run to the output cap, and all are billed."""
        ...

    def continues_stored_context(self, body: JSONObject) -> bool:
        """Whether the request reads context the provider keeps (OpenAI's
        ``previous_response_id``, ``conversation``, a stored ``prompt`` template, an
        ``item_reference`` input item): it is billed as input but is not in the body."""
        ...

    def requested_service_tier(self, body: JSONObject) -> str | None:
        """The processing tier a request asks for (OpenAI's ``service_tier``), which
        ``PricedModel.serving`` prices; None where the format has none."""
        ...

    def requested_web_searches(self, body: JSONObject) -> int:
        """The most server-side web searches a request's tools may bill, each at the model's
        ``web_search`` price (0 without such a tool): the tool's own limit where it sets one,
        else ``ASSUMED_WEB_SEARCHES``."""
        ...

    def hidden_input_tokens(self, body: JSONObject) -> int:
        """Input tokens the provider bills for a request that its body does not carry (the
        system prompt Anthropic adds for tools, its own tools' definitions): what an estimate
        made from the body adds to it. 0 where the format adds none."""
        ...

    def requests_audio_output(self, body: JSONObject) -> bool:
        """Whether the request asks for spoken output (Chat Completions' ``modalities``
        with ``"audio"``, or its ``audio`` parameter): its output may all be audio, billed at
        the model's audio output price."""
        ...

    def requested_side_calls(self, body: JSONObject) -> tuple[SideCall, ...]:
        """The inferences the provider may run inside the request besides the call itself,
        billed apart (Anthropic's compaction and advisor tool); none where the format has
        none."""
        ...

    def requested_cache_ttl(self, body: JSONObject) -> str | None:
        """``"5m"`` or ``"1h"`` when the request asks the provider to write a prompt cache.

        Cache writes cost more than plain input, so an estimate must price the prompt at the
        write rate when the request may create a cache entry.
        """
        ...
