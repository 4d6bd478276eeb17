"""Pre-request estimates: an upper bound on a call's cost, from its request body alone.

The estimate is what a budget reserves before the request is forwarded; the actual cost always
replaces it afterwards. It must bound ordinary requests from above, or concurrent requests could
together spend past a hard cap, so every guess leans high: input is one token per 3 bytes of the
body (English prose runs about 4 bytes a token, but code and JSON run near 3; the hosted
service's bytes / 4 + 10 % undershoots them), counting the JSON syntax, roles and keys as prompt
text; non-ASCII bytes count double (one CJK character, 3 bytes, is often a token or more); input
the provider adds that the body does not carry (Anthropic's tool-use system prompt) is added;
the prompt is priced at the cache-write rate when the request asks for a cache write, or when
the model writes one unasked (OpenAI's that price a write above input); output is the request's
max tokens (at most the model's output cap, which the provider refuses to exceed), else the
model's output cap, times the completions it asks for (``n``), at the audio output price when
the request asks for speech; an earlier spoken answer it brings back by id is billed as audio
input, at most the model's output cap each; each web search the request's search tools may make
(their ``max_uses``, else an assumed five) is priced at the model's per-search fee; a request
that reads context the provider stores (``previous_response_id``, a stored prompt template, an
input item by reference) is assumed to read the model's whole context window, the most its
unseen content can bill. Images and files are not priced by their bytes (``wire.media``): each
image counts the most one can bill on the model, an inline PDF's pages the most each can bill
(its text and an image of it), and a file the body only names (a URL, a file id), or a PDF whose
pages cannot be counted, the model's context window. The prompt's text (files included) never
counts past the context window, which the provider refuses to exceed; images may, as OpenAI
bills gpt-4o-mini's image tokens apart from its window. The inferences a request may have the
provider run besides the call (``WireFormat.requested_side_calls``: Anthropic's server-side
compaction once the prompt may reach its trigger, each advisor call its tool allows) are added,
each reading the prompt and the call's whole output on its own model, to its own output cap.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nullspend.money import PICODOLLARS_PER_MICRODOLLAR
from nullspend.pricing.catalog import Catalog, PricedModel, default_catalog
from nullspend.wire import ANTHROPIC_MESSAGES, GEMINI, OPENAI_CHAT, OPENAI_RESPONSES
from nullspend.wire.base import SideCall, WireFormat
from nullspend.wire.media import Media, media_of

# Assumed when neither the request nor the catalog gives an output cap.
DEFAULT_OUTPUT_CAP = 32_768
# What a message adds around its text in a request body (``{"role":"assistant","content":""},``,
# 34 bytes, counted as a body's bytes are): an estimate made from the messages' text alone
# (a LangChain callback's) adds it for each, where providers bill 3-5 tokens a message.
MESSAGE_FRAMING_TOKENS = 12
# What an unpriced model's call is assumed to cost: $1, as the hosted service assumes.
UNPRICED_ESTIMATE_MICRODOLLARS = 1_000_000
# The most input tokens one image can bill, by provider, where the catalog gives no figure of
# the model's own (``image_input_tokens``): OpenAI's patch-priced models, 1,536 32-px patches
# times the highest multiplier (gpt-4.1-nano's 2.46), above its tile-priced ones' 8 tiles
# (85 + 8 x 170); Anthropic's, about 1,600 (a larger image is scaled down first). A provider
# with no figure here (Gemini) has its images counted by their bytes.
IMAGE_INPUT_TOKENS = {"openai": 3_779, "anthropic": 1_600}
# An image OpenAI is asked to take at its original size (``detail: "original"``): up to 10,000
# patches, at the highest multiplier above.
ORIGINAL_IMAGE_INPUT_TOKENS = 24_600
# A PDF page's text as the provider extracts it, billed besides the page's image: a dense page
# (two columns of 9-pt text, a table of figures) holds about 7,000 characters, some 2,500 tokens
# at 3 characters a token; prose pages run 500 to 800 (Anthropic bills such a page 2,100 to
# 2,350 tokens, its image included).
PDF_PAGE_TEXT_TOKENS = 2_500
# A named file's bound when the catalog gives the model no context window.
DEFAULT_CONTEXT_WINDOW = 200_000


@dataclass(slots=True)  # not frozen: frozen init costs ~0.5 us, and this is built per call
class Estimate:
    microdollars: int
    requested_model: str | None
    model: PricedModel | None
    """None when the model is not in the catalog: the estimate is then a flat assumption."""
    input_tokens: int
    output_tokens: int

    @property
    def unpriced(self) -> bool:
        return self.model is None


def estimate_input_tokens(raw_body: bytes) -> int:
    size = len(raw_body)
    if not raw_body.isascii():
        size += size - len(raw_body.decode("ascii", "ignore"))
    return -(-size // 3)  # ceil(size / 3), in integers


def estimate_request(
    wire: WireFormat,
    body: Mapping[str, Any],
    raw_body: bytes,
    *,
    model: str | None = None,
    catalog: Catalog | None = None,
    unpriced_microdollars: int = UNPRICED_ESTIMATE_MICRODOLLARS,
) -> Estimate:
    """Estimate a request in ``wire``'s format; ``model`` names it where the body does not."""
    model = model or wire.requested_model(body)
    return estimate_call(
        model,
        estimate_input_tokens(raw_body) + wire.hidden_input_tokens(body),
        wire.requested_output_cap(body),
        media=media_of(body),
        choices=wire.requested_choices(body),
        stored_context=wire.continues_stored_context(body),
        cache_ttl=wire.requested_cache_ttl(body),
        service_tier=wire.requested_service_tier(body),
        web_searches=wire.requested_web_searches(body),
        audio_output=wire.requests_audio_output(body),
        side_calls=wire.requested_side_calls(body),
        catalog=catalog,
        unpriced_microdollars=unpriced_microdollars,
    )


def _plus_side_calls(
    call: Estimate,
    side_calls: Iterable[SideCall],
    catalog: Catalog | None,
    unpriced_microdollars: int,
) -> Estimate:
    """``call`` with what the inferences a request may run besides it (compaction, an advisor)
    may bill: each run reads the whole transcript, the prompt and all the call may have written
    before it, on its own model (the request's where it names none), to its own output cap."""
    for side in side_calls:
        if call.input_tokens < side.min_input_tokens:
            continue  # the prompt cannot reach its trigger: it never runs
        one_run = estimate_call(
            side.model or call.requested_model,
            call.input_tokens + call.output_tokens,
            side.output_cap,
            cache_ttl=side.cache_ttl,
            catalog=catalog,
            unpriced_microdollars=unpriced_microdollars,
        )
        call.microdollars += side.calls * one_run.microdollars
    return call


def estimate_call(
    model: str | None,
    input_tokens: int,
    output_cap: int | None,
    *,
    media: Media | None = None,
    choices: int = 1,
    stored_context: bool = False,
    cache_ttl: str | None = None,
    service_tier: str | None = None,
    web_searches: int = 0,
    audio_output: bool = False,
    side_calls: Iterable[SideCall] = (),
    catalog: Catalog | None = None,
    unpriced_microdollars: int = UNPRICED_ESTIMATE_MICRODOLLARS,
) -> Estimate:
    """Estimate a call already counted: what an integration that sees no request body (a
    LangChain callback) reserves. ``input_tokens`` counts the prompt's bytes, the ``media``
    in it (``wire.media.media_of``) included; ``choices`` completions may each run to the
    output cap; a call that continues a ``stored_context`` may read up to the model's whole
    context window; ``cache_ttl`` ("5m" or "1h") prices the prompt as a cache write;
    ``service_tier`` (what the request asks for) prices the call in that processing tier;
    ``web_searches`` (the most its search tools may make) adds each search's fee;
    ``audio_output`` (the request asks for speech) prices the output at the audio rate;
    ``side_calls`` (``WireFormat.requested_side_calls``) are the passes the provider may run
    besides the call, each added at its own model."""
    priced = (catalog or default_catalog()).resolve(model, service_tier) if model else None
    model_cap = priced.max_output_tokens if priced else None
    cap = output_cap or model_cap or DEFAULT_OUTPUT_CAP
    if model_cap is not None:
        cap = min(cap, model_cap)  # the provider refuses a larger one: no more can bill
    output_tokens = choices * cap
    if priced is None:
        unpriced = Estimate(unpriced_microdollars, model, None, input_tokens, output_tokens)
        return _plus_side_calls(unpriced, side_calls, catalog, unpriced_microdollars)
    image_tokens = audio_tokens = 0
    if media is not None:
        input_tokens, image_tokens = _with_media(priced, input_tokens, media)
        if priced.entry.prices.audio_input is not None:  # else the model takes no audio
            # An earlier answer's audio, brought back, is at most what one answer can hold.
            audio_tokens = media.audio_references * (model_cap or DEFAULT_OUTPUT_CAP)
    if window := priced.context_window:
        if stored_context:
            input_tokens = max(input_tokens, window)
        # Past its window the provider refuses the request: nothing more can bill. Unless a
        # price tier starts past it (a longer-context mode the catalog's window leaves out).
        if input_tokens > window and (not priced.tiers or priced.tiers[0][0] < window):
            input_tokens = window
        audio_tokens = min(audio_tokens, window)
    input_tokens += image_tokens
    # Priced as total_picodollars prices it, without building a Usage for its few counts.
    prices = priced.prices_for(input_tokens + audio_tokens)[0] if priced.tiers else priced.prices
    if cache_ttl == "1h":
        prompt_price = prices.cache_write_1h
    elif cache_ttl is not None or priced.provider == "openai":
        # OpenAI writes the prompt to its cache unasked on the models that price a write above
        # input (gpt-5.6 and later: an implicit breakpoint unless told otherwise).
        prompt_price = max(prices.input, prices.cache_write_5m)
    else:
        prompt_price = prices.input
    # Asked for speech, any of the output may be audio (a catalog audio price below the text
    # one would not make the text cheaper).
    output_price = max(prices.output, prices.audio_output) if audio_output else prices.output
    total = (
        input_tokens * prompt_price
        + audio_tokens * prices.audio_input
        + output_tokens * output_price
    )
    if web_searches:
        total += web_searches * prices.web_search
    microdollars = -(
        -total // PICODOLLARS_PER_MICRODOLLAR
    )  # round up: an estimate must not fall short
    estimate = Estimate(microdollars, model, priced, input_tokens + audio_tokens, output_tokens)
    return _plus_side_calls(estimate, side_calls, catalog, unpriced_microdollars)


def _with_media(priced: PricedModel, input_tokens: int, media: Media) -> tuple[int, int]:
    """The prompt's text tokens with its named files at the model's window, its inline PDFs'
    pages at the most each can bill, its images' bytes left out; and its images' tokens, at the
    most one can bill on the model (None known: the images and PDFs stay counted by their
    bytes)."""
    input_tokens += media.named_files * (priced.context_window or DEFAULT_CONTEXT_WINDOW)
    per_image = priced.entry.image_input_tokens or IMAGE_INPUT_TOKENS.get(priced.provider)
    if per_image is None:
        return input_tokens, 0
    if media.pdf_pages:  # each page billed as its text and an image of it; never below its bytes
        pages = media.pdf_pages * (per_image + PDF_PAGE_TEXT_TOKENS)
        input_tokens += max(pages - media.pdf_bytes // 3, 0)
    if not media.images:
        return input_tokens, 0
    original = media.original_images * max(ORIGINAL_IMAGE_INPUT_TOKENS - per_image, 0)
    return max(input_tokens - media.image_bytes // 3, 0), media.images * per_image + original


def estimate_request_body(
    request: Mapping[str, Any],
    wire: WireFormat | None = None,
    *,
    provider: str | None = None,
    model: str | None = None,
) -> Estimate:
    """Estimate a provider request body in ``wire``'s format, or in the format its shape,
    provider and model say it is in: what a reservation given a request (not an estimate)
    reserves, on the server and in-process alike."""
    wire = wire or _format_of(request, provider, model or request.get("model"))
    raw = json.dumps(request, separators=(",", ":"), ensure_ascii=False).encode()
    return estimate_request(wire, request, raw, model=model)


def _format_of(body: Mapping[str, Any], provider: str | None, model: object) -> WireFormat:
    if "contents" in body:
        return GEMINI
    if "input" in body:
        return OPENAI_RESPONSES
    return ANTHROPIC_MESSAGES if served_by_anthropic(provider, model) else OPENAI_CHAT


def served_by_anthropic(provider: str | None, model: object) -> bool:
    """Anthropic's provider, or a Claude model by the catalog (which reads Bedrock's and
    Vertex's ids too), wherever it is served."""
    if provider == "anthropic":
        return True
    priced = default_catalog().resolve(model) if isinstance(model, str) and model else None
    return priced is not None and priced.provider == "anthropic"
