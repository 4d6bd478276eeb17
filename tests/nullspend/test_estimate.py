"""Pre-request estimates: exact arithmetic on the documented heuristics, and an upper bound for
ordinary requests."""

import json
from typing import Any

import pytest

from nullspend.money import PICODOLLARS_PER_MICRODOLLAR
from nullspend.pricing import cost, default_catalog, estimate_call, estimate_request
from nullspend.pricing.estimate import (
    DEFAULT_OUTPUT_CAP,
    ORIGINAL_IMAGE_INPUT_TOKENS,
    PDF_PAGE_TEXT_TOKENS,
    UNPRICED_ESTIMATE_MICRODOLLARS,
)
from nullspend.usage import Usage
from nullspend.wire import ANTHROPIC_MESSAGES, GEMINI, OPENAI_CHAT, OPENAI_RESPONSES, WireFormat
from nullspend.wire.media import Media, media_of
from tests.nullspend.pdf_documents import base64_of, document


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def estimate(wire: WireFormat, body: dict[str, Any], model: str | None = None) -> Any:
    return estimate_request(wire, body, encode(body), model=model)


def test_input_is_a_token_per_three_body_bytes_and_output_the_request_cap() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "x" * 351}],
        "max_completion_tokens": 500,
        "max_tokens": 9,
    }
    size = len(encode(body))
    result = estimate(OPENAI_CHAT, body)
    assert result.input_tokens == -(-size // 3)
    assert result.output_tokens == 500  # max_completion_tokens wins over the legacy max_tokens
    exact = cost(Usage(input_tokens=result.input_tokens, output_tokens=500), "gpt-4o")
    assert result.microdollars == -(-exact.total_picodollars // 1_000_000)  # rounded up


@pytest.mark.parametrize(
    ("wire", "body", "cap"),
    [
        (OPENAI_RESPONSES, {"model": "o3", "input": "hi", "max_output_tokens": 77}, 77),
        (ANTHROPIC_MESSAGES, {"model": "claude-haiku-4-5", "max_tokens": 12, "messages": []}, 12),
        (GEMINI, {"contents": [], "generationConfig": {"maxOutputTokens": 33}}, 33),
    ],
)
def test_each_format_reads_its_output_cap(wire: WireFormat, body: dict[str, Any], cap: int) -> None:
    assert (
        estimate(wire, body, model="gemini-2.5-flash" if wire is GEMINI else None).output_tokens
        == cap
    )


def test_without_a_cap_the_model_output_cap_is_assumed() -> None:
    result = estimate(OPENAI_RESPONSES, {"model": "o3", "input": "think hard"})
    assert result.model is not None
    assert result.output_tokens == result.model.max_output_tokens == 100_000


def test_model_without_a_known_cap_falls_back_to_the_default() -> None:
    result = estimate(OPENAI_CHAT, {"model": "chatgpt-4o-latest", "messages": []})
    assert result.model is not None
    assert result.model.max_output_tokens is None
    assert result.output_tokens == DEFAULT_OUTPUT_CAP


@pytest.mark.parametrize(
    ("wire", "body", "output_tokens"),
    [
        (OPENAI_CHAT, {"model": "gpt-4o", "max_tokens": 10**25}, 16_384),
        (OPENAI_CHAT, {"model": "gpt-4o", "max_completion_tokens": 40_000, "n": 3}, 3 * 16_384),
        (OPENAI_CHAT, {"model": "gpt-4o-mini", "max_tokens": 100, "n": 10**15}, 128 * 100),
        (ANTHROPIC_MESSAGES, {"model": "claude-opus-4-1", "max_tokens": 10**20}, 32_000),
        # 128,000 with a beta header, which is not in the body: the catalog's cap allows it.
        (ANTHROPIC_MESSAGES, {"model": "claude-3-7-sonnet", "max_tokens": 128_000}, 128_000),
        (OPENAI_RESPONSES, {"model": "o3", "input": "hi", "max_output_tokens": 10**30}, 100_000),
    ],
)
def test_an_output_bound_past_what_the_provider_allows_counts_what_it_allows(
    wire: WireFormat, body: dict[str, Any], output_tokens: int
) -> None:
    """A cap above the model's own, or more completions than OpenAI gives (128), is refused by
    the provider: counted as asked, such a valid-looking request was estimated past what a
    BIGINT holds (``n: 10**15``, ``max_tokens: 10**25``)."""
    result = estimate(wire, body)
    assert result.output_tokens == output_tokens
    assert result.microdollars < 100_000_000  # $100: well within any amount a budget holds


def test_non_ascii_bytes_count_double() -> None:
    ascii_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "a" * 300}]}
    cjk_body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "世" * 100}]}
    # both bodies are the same size in bytes; the CJK one is estimated at its 300 extra bytes more
    assert len(encode(ascii_body)) == len(encode(cjk_body))
    extra = (
        estimate(OPENAI_CHAT, cjk_body).input_tokens
        - estimate(OPENAI_CHAT, ascii_body).input_tokens
    )
    assert extra == pytest.approx(300 / 3, abs=1)


def test_cache_writes_requested_are_priced_at_the_write_rate() -> None:
    def body(cache_control: dict[str, str] | None) -> dict[str, Any]:
        block: dict[str, Any] = {"type": "text", "text": "policy " * 2000}
        if cache_control:
            block["cache_control"] = cache_control
        return {
            "model": "claude-sonnet-4-5",
            "max_tokens": 100,
            "system": [block],
            "messages": [{"role": "user", "content": "hi"}],
        }

    plain = estimate(ANTHROPIC_MESSAGES, body(None)).microdollars
    five_minutes = estimate(ANTHROPIC_MESSAGES, body({"type": "ephemeral"})).microdollars
    one_hour = estimate(ANTHROPIC_MESSAGES, body({"type": "ephemeral", "ttl": "1h"})).microdollars
    assert plain < five_minutes < one_hour


def test_a_call_counted_already_is_estimated_as_its_request_would_be() -> None:
    """``estimate_call`` (integrations that see no body) and ``estimate_request`` agree."""
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "system": [
            {
                "type": "text",
                "text": "policy " * 900,
                "cache_control": {"type": "ephemeral", "ttl": "1h"},
            }
        ],
        "messages": [{"role": "user", "content": "hi"}],
    }
    raw = encode(body)
    from_body = estimate_request(ANTHROPIC_MESSAGES, body, raw)
    counted = estimate_call("claude-sonnet-4-5", -(-len(raw) // 3), 300, cache_ttl="1h")
    assert counted == from_body
    uncapped = estimate_call("claude-sonnet-4-5", 10, None)
    assert uncapped.output_tokens == from_body.model.max_output_tokens  # type: ignore[union-attr]
    assert estimate_call("acme-private", 10, None).microdollars == UNPRICED_ESTIMATE_MICRODOLLARS


def test_long_prompts_are_estimated_at_long_context_prices() -> None:
    body = {
        "model": "claude-sonnet-4-20250514",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "word " * 180_000}],
    }  # ~900 kB: > 200k tokens
    result = estimate(ANTHROPIC_MESSAGES, body)
    assert result.input_tokens > 200_000
    base_rate = cost(Usage(input_tokens=result.input_tokens, output_tokens=10), "claude-sonnet-4")
    assert base_rate.tier_threshold == 200_000
    assert result.microdollars >= base_rate.total_microdollars


def test_unpriced_model_is_assumed_to_cost_a_dollar() -> None:
    result = estimate(OPENAI_CHAT, {"model": "acme-private", "messages": []})
    assert result.unpriced
    assert result.microdollars == UNPRICED_ESTIMATE_MICRODOLLARS


ENGLISH = (
    "Summarise the quarterly report below for the board, in three bullet points, and flag any "
    "line item whose spend grew by more than ten percent compared with the previous quarter. "
)
CJK = "请把下面的季度报告总结成三个要点，并标出支出比上季度增长超过百分之十的项目。"  # noqa: RUF001


@pytest.mark.parametrize(
    ("text", "tokens_per_char"),
    [
        # English prose is about 4 characters a token; code and terse text nearer 3.
        (ENGLISH * 40, 1 / 3),
        # CJK text is up to about one token a character in current tokenizers.
        (CJK * 40, 1.0),
    ],
    ids=["english", "cjk"],
)
@pytest.mark.parametrize("turns", [1, 12])
def test_estimate_bounds_an_ordinary_conversation_from_above(
    text: str, tokens_per_char: float, turns: int
) -> None:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": text[: len(text) // turns]}
        for i in range(turns)
    ]
    body = {"model": "gpt-4.1", "messages": messages, "max_tokens": 800}
    # a pessimistic actual: the text's tokens plus 4 tokens of framing per message and 3 to prime
    prompt = int(sum(len(m["content"]) for m in messages) * tokens_per_char) + 4 * turns + 3
    actual = cost(Usage(input_tokens=prompt, output_tokens=800), "gpt-4.1").total_microdollars
    assert estimate(OPENAI_CHAT, body).microdollars >= actual


@pytest.mark.parametrize(
    ("wire", "asks", "choices"),
    [
        (OPENAI_CHAT, {"n": 3}, 3),
        (OPENAI_CHAT, {"n": "3"}, 1),  # malformed: the provider refuses it
        (GEMINI, {"generationConfig": {"maxOutputTokens": 100, "candidateCount": 2}}, 2),
        (GEMINI, {"generation_config": {"max_output_tokens": 100, "candidate_count": 4}}, 4),
    ],
)
def test_every_completion_asked_for_is_in_the_estimate(
    wire: WireFormat, asks: dict[str, Any], choices: int
) -> None:
    model = {"model": "gpt-4o-mini" if wire is OPENAI_CHAT else "gemini-2.5-flash"}
    one = estimate_request(wire, {**model, "max_tokens": 100}, b"")
    if wire is GEMINI:
        one = estimate_request(wire, {**model, "generationConfig": {"maxOutputTokens": 100}}, b"")
    many = estimate_request(wire, {**model, "max_tokens": 100, **asks}, b"")
    assert many.output_tokens == choices * one.output_tokens


def test_a_turn_continuing_a_stored_conversation_is_estimated_at_the_whole_context() -> None:
    """Its earlier turns are billed as input but are not in the body: counting the body alone
    let concurrent turns spend 24 times a strict cap."""
    model = default_catalog().resolve("gpt-4o-mini")
    assert model is not None
    assert model.context_window
    turn = {"model": "gpt-4o-mini", "input": "and then?", "max_output_tokens": 100}
    alone = estimate_request(OPENAI_RESPONSES, turn, json.dumps(turn).encode())
    for continued in ({"previous_response_id": "resp_1"}, {"conversation": "conv_1"}):
        body = {**turn, **continued}
        estimate = estimate_request(OPENAI_RESPONSES, body, json.dumps(body).encode())
        assert estimate.input_tokens == model.context_window > alone.input_tokens
        assert estimate.output_tokens == alone.output_tokens


@pytest.mark.parametrize(
    "stored",
    [
        {"prompt": {"id": "pmpt_1", "version": "3", "variables": {"city": "Paris"}}},
        {"input": [{"type": "item_reference", "id": "msg_1"}, {"role": "user", "content": "hi"}]},
    ],
    ids=["prompt-template", "item-reference"],
)
def test_stored_content_a_request_names_is_estimated_at_the_whole_context(
    stored: dict[str, Any],
) -> None:
    """A stored prompt template or an input item given by reference is billed by its stored
    content, as previous_response_id's turns are: counted by the body alone, such a request
    was estimated at 35 tokens."""
    turn = {"model": "gpt-4.1", "input": "hi", "max_output_tokens": 100}
    result = estimate(OPENAI_RESPONSES, {**turn, **stored})
    assert result.model is not None
    assert result.input_tokens == result.model.context_window == 1_047_576
    listed = {**turn, "input": [{"type": "message", "role": "user", "content": "hi"}]}
    assert estimate(OPENAI_RESPONSES, listed).input_tokens < 100


@pytest.mark.parametrize(
    ("wire", "model", "tool", "searches"),
    [
        (
            ANTHROPIC_MESSAGES,
            "claude-sonnet-4-5",
            {"type": "web_search_20250305", "max_uses": 3},
            3,
        ),
        (ANTHROPIC_MESSAGES, "claude-sonnet-4-5", {"type": "web_search_20250305"}, 5),
        (OPENAI_RESPONSES, "gpt-4o-mini", {"type": "web_search"}, 5),
        (OPENAI_RESPONSES, "gpt-4o-mini", {"type": "web_search_preview"}, 5),
        (ANTHROPIC_MESSAGES, "claude-sonnet-4-5", {"type": "custom", "name": "lookup"}, 0),
    ],
)
def test_the_searches_a_request_may_make_are_in_its_estimate(
    wire: WireFormat, model: str, tool: dict[str, Any], searches: int
) -> None:
    """A web search is billed per search on top of the tokens ($0.01 each), far above most
    calls' tokens: left out, 20 concurrent searching calls spent 16 times a hard cap. Each
    search a tool may make (its max_uses, else five) is reserved."""
    priced = default_catalog().resolve(model)
    assert priced is not None
    assert priced.prices.web_search > 0
    plain = {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    if wire is OPENAI_RESPONSES:
        plain = {"model": model, "max_output_tokens": 100, "input": "hi"}
    searching = {**plain, "tools": [{**tool, "name": tool.get("name", "web_search")}]}
    added = estimate(wire, searching).microdollars - estimate(wire, plain).microdollars
    fee = searches * priced.prices.web_search
    # Anthropic's system prompt for tools is billed with any tool, a search's or not.
    fee += wire.hidden_input_tokens(searching) * priced.prices.input
    fee //= PICODOLLARS_PER_MICRODOLLAR
    assert fee <= added <= fee + 200  # and the tool's own few tokens


@pytest.mark.parametrize(
    ("tools", "hidden"),
    [
        ([], 0),
        ([{"name": "lookup", "input_schema": {"type": "object"}}], 530),
        ([{"type": "bash_20250124", "name": "bash"}], 530 + 245),
        (
            [
                {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
                {"type": "computer_20250124", "name": "computer"},
                {"type": "web_search_20250305", "name": "web_search"},
            ],
            530 + 700 + 735 + 499,
        ),
    ],
)
def test_the_prompt_anthropic_adds_for_tools_is_in_the_estimate(
    tools: list[dict[str, Any]], hidden: int
) -> None:
    """Anthropic bills a system prompt of its own (346 tokens on current models, up to 530) on
    every request that sends tools, and its own tools' definitions (bash 245, the text editor
    700) in place of their short specs: input that is in no byte of the body. Left out, a call
    with tools and a small output cap cost more than it reserved."""
    body: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if tools:
        body["tools"] = tools
    result = estimate(ANTHROPIC_MESSAGES, body)
    assert result.input_tokens == -(-len(encode(body)) // 3) + hidden
    # What such a call with the bash tool is billed on a current model: the body's few tokens,
    # the system prompt and the tool's definition; the estimate bounds it.
    if tools and tools[0].get("name") == "bash":
        billed = cost(Usage(input_tokens=10 + 346 + 245, output_tokens=5), "claude-sonnet-4-5")
        assert result.microdollars * PICODOLLARS_PER_MICRODOLLAR >= billed.total_picodollars


def _billed(usage: Usage, model: str) -> int:
    return cost(usage, model).total_picodollars


def test_a_compaction_the_prompt_may_trigger_is_in_the_estimate() -> None:
    """Server-side compaction summarizes the whole context on the request's model once the
    prompt reaches its trigger, a pass billed besides the answer and left out of its top-level
    usage: the compaction docs' example bills 180,000 + 23,000 input tokens for a call whose
    answer read 23,000. Left out, the estimate reserved about a third of such a call's bill."""
    model = "claude-sonnet-4-5"
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "x" * 540_000}],  # 180,000 tokens
        "context_management": {
            "edits": [
                {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 100_000}}
            ]
        },
    }
    plain = {k: v for k, v in body.items() if k != "context_management"}
    summary = Usage(input_tokens=180_000, output_tokens=3_500)
    answer = Usage(input_tokens=23_000, output_tokens=1_000)
    bill = _billed(summary, model) + _billed(answer, model)
    assert estimate(ANTHROPIC_MESSAGES, plain).microdollars * PICODOLLARS_PER_MICRODOLLAR < bill
    reserved = estimate(ANTHROPIC_MESSAGES, body).microdollars * PICODOLLARS_PER_MICRODOLLAR
    assert reserved >= bill
    # A prompt that cannot reach the trigger is never compacted: nothing more is reserved.
    short = {**body, "messages": [{"role": "user", "content": "hi"}]}
    short_plain = {**plain, "messages": short["messages"]}
    assert (
        estimate(ANTHROPIC_MESSAGES, short).microdollars
        - estimate(ANTHROPIC_MESSAGES, short_plain).microdollars
        < 1_000  # the edit's own few bytes, where the pass would reserve dollars
    )
    # Nor is one past its trigger; without a trigger, the default one (150,000 tokens) applies.
    edits = body["context_management"]["edits"]
    high = {**body, "context_management": {"edits": [{**edits[0], "trigger": {"value": 200_000}}]}}
    assert estimate(ANTHROPIC_MESSAGES, high).microdollars * PICODOLLARS_PER_MICRODOLLAR < bill
    default = {**body, "context_management": {"edits": [{"type": "compact_20260112"}]}}
    assert estimate(ANTHROPIC_MESSAGES, default).microdollars * PICODOLLARS_PER_MICRODOLLAR >= bill


@pytest.mark.parametrize(("max_uses", "calls"), [(2, 2), (None, 3)])
def test_the_advisor_calls_a_request_allows_are_in_its_estimate(
    max_uses: int | None, calls: int
) -> None:
    """The advisor tool runs a sub-inference on a stronger model over the whole transcript,
    billed at that model's rates and left out of the top-level usage: a Haiku call consulting
    Opus twice bills far more than Haiku's rates on its own body. Each call the tool allows
    (its max_uses, else three) is reserved at the advisor's input rate on the transcript plus
    its output bound (the tool's max_tokens, else the advisor model's output cap)."""
    executor, advisor = "claude-haiku-4-5", "claude-opus-4-8"
    tool: dict[str, Any] = {
        "type": "advisor_20260301",
        "name": "advisor",
        "model": advisor,
        "max_tokens": 2048,
    }
    if max_uses is not None:
        tool["max_uses"] = max_uses
    body: dict[str, Any] = {
        "model": executor,
        "max_tokens": 4000,
        "messages": [{"role": "user", "content": "x" * 30_000}],  # 10,000 tokens
        "tools": [tool],
    }
    # The executor's turns, and each advisor call reading the transcript, at its full bounds.
    turns = Usage(input_tokens=10_000 + 530, output_tokens=4000)
    consult = Usage(input_tokens=10_000 + 530 + 4000, output_tokens=2048)
    bill = _billed(turns, executor) + calls * _billed(consult, advisor)
    result = estimate(ANTHROPIC_MESSAGES, body)
    assert result.microdollars * PICODOLLARS_PER_MICRODOLLAR >= bill
    assert result.microdollars * PICODOLLARS_PER_MICRODOLLAR < bill * 11 // 10  # not far above
    without = estimate(ANTHROPIC_MESSAGES, {**body, "tools": []})
    assert without.microdollars * PICODOLLARS_PER_MICRODOLLAR < bill // 2


@pytest.mark.parametrize("wire", [OPENAI_CHAT, OPENAI_RESPONSES, GEMINI])
def test_other_formats_add_no_hidden_input(wire: WireFormat) -> None:
    assert wire.hidden_input_tokens({"tools": [{"type": "function", "name": "f"}]}) == 0


def _asking(model: str, *parts: dict[str, Any], key: str = "messages") -> dict[str, Any]:
    content = [{"type": "text", "text": "What is this?"}, *parts]
    return {"model": model, "max_tokens": 100, key: [{"role": "user", "content": content}]}


IMAGE_URL = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
TEXT_ONLY_TOKENS = estimate(OPENAI_CHAT, _asking("gpt-4o")).input_tokens


@pytest.mark.parametrize(
    ("wire", "body", "per_image"),
    [
        (OPENAI_CHAT, _asking("gpt-4o", IMAGE_URL), 3_779),
        (OPENAI_CHAT, _asking("gpt-4o-mini", IMAGE_URL), 48_169),  # the catalog's own figure
        (
            OPENAI_RESPONSES,
            _asking(
                "gpt-4o", {"type": "input_image", "image_url": "https://e.com/a.png"}, key="input"
            ),
            3_779,
        ),
        (
            ANTHROPIC_MESSAGES,
            _asking(
                "claude-sonnet-4-5",
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": "image/png",
                        "data": "A" * 3_000_000,
                    },
                },
            ),
            1_600,
        ),
    ],
)
def test_an_image_counts_the_most_one_can_bill_not_its_bytes(
    wire: WireFormat, body: dict[str, Any], per_image: int
) -> None:
    """An image given by URL was estimated at the URL's few dozen bytes where OpenAI bills
    gpt-4o-mini 25,501 tokens for a 1024-px one: 50 concurrent calls spent 9.6 times a cap.
    One given inline was estimated at its base64 size: a 2 MB photo past the model's window,
    denied under a $1 cap it fits in easily."""
    result = estimate(wire, body)
    assert per_image <= result.input_tokens < per_image + 2 * TEXT_ONLY_TOKENS


def test_a_file_the_body_only_names_counts_the_models_window() -> None:
    named = {"type": "document", "source": {"type": "url", "url": "https://e.com/a.pdf"}}
    inline = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "hi"},
    }
    window = default_catalog().resolve("claude-opus-4-1").context_window
    assert estimate(ANTHROPIC_MESSAGES, _asking("claude-opus-4-1", named)).input_tokens == window
    assert estimate(ANTHROPIC_MESSAGES, _asking("claude-opus-4-1", inline)).input_tokens < 100
    by_id = {"type": "file", "file": {"file_id": "file-abc"}}
    assert estimate(OPENAI_CHAT, _asking("gpt-4o", by_id)).input_tokens == 128_000


def _pdf_parts(data: str) -> dict[WireFormat, tuple[str, dict[str, Any]]]:
    """An inline PDF as each provider's request carries it, and a model of the provider."""
    url = f"data:application/pdf;base64,{data}"
    return {
        ANTHROPIC_MESSAGES: (
            "claude-sonnet-4-5",
            {
                "type": "document",
                "source": {"type": "base64", "media_type": "application/pdf", "data": data},
            },
        ),
        OPENAI_CHAT: ("gpt-4o", {"type": "file", "file": {"filename": "r.pdf", "file_data": url}}),
        OPENAI_RESPONSES: ("gpt-4o", {"type": "input_file", "filename": "r.pdf", "file_data": url}),
    }


@pytest.mark.parametrize(
    ("wire", "per_image"),
    [(ANTHROPIC_MESSAGES, 1_600), (OPENAI_CHAT, 3_779), (OPENAI_RESPONSES, 3_779)],
)
@pytest.mark.parametrize("object_stream", [False, True], ids=["plain", "object-stream"])
def test_an_inline_pdf_counts_each_page_as_its_text_and_an_image(
    wire: WireFormat, per_image: int, object_stream: bool
) -> None:
    """The provider bills each page of a PDF as its text and an image of it (Anthropic: 2,100 to
    2,350 tokens a text page): a 10-page report, 12 kB compressed, was estimated by its bytes at
    5,755 tokens where Anthropic bills about 23,000."""
    data = base64_of(document(10, object_stream=object_stream))
    model, part = _pdf_parts(data)[wire]
    key = "input" if wire is OPENAI_RESPONSES else "messages"
    body = _asking(model, part, key=key)
    result = estimate(wire, body)
    carried = data if wire is ANTHROPIC_MESSAGES else f"data:application/pdf;base64,{data}"
    text = -(-len(encode(body)) // 3) - len(carried) // 3
    assert result.input_tokens == text + 10 * (per_image + PDF_PAGE_TEXT_TOKENS)
    if wire is ANTHROPIC_MESSAGES:
        assert result.input_tokens > 10 * 2_350


def test_an_inline_pdf_counts_no_less_than_its_bytes_nor_more_than_the_window() -> None:
    """A page holding a large scan is counted by its bytes still; a long document stops at the
    window; one whose pages cannot be counted counts the window, as a file only named does."""
    scan = document(1).replace(b"%%EOF", b"%" + b"x" * 60_000 + b"\n%%EOF")
    model, part = _pdf_parts(base64_of(scan))[ANTHROPIC_MESSAGES]
    body = _asking(model, part)
    assert estimate(ANTHROPIC_MESSAGES, body).input_tokens == -(-len(encode(body)) // 3)
    long = _asking("claude-opus-4-1", _pdf_parts(base64_of(document(60)))[ANTHROPIC_MESSAGES][1])
    assert estimate(ANTHROPIC_MESSAGES, long).input_tokens == 200_000
    blank = base64_of(b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n")
    unknown = _asking("claude-opus-4-1", _pdf_parts(blank)[ANTHROPIC_MESSAGES][1])
    assert estimate(ANTHROPIC_MESSAGES, unknown).input_tokens == 200_000


def test_the_prompt_never_counts_past_the_window_unless_a_tier_lies_beyond_it() -> None:
    """The provider refuses a request past the model's window; Claude Sonnet 4.5 prices a tier
    past its catalog window (its 1M-token mode), which is not cut."""
    huge = [{"role": "user", "content": "x" * 900_000}]
    assert estimate(OPENAI_CHAT, {"model": "gpt-4o", "messages": huge}).input_tokens == 128_000
    sonnet = estimate(ANTHROPIC_MESSAGES, {"model": "claude-sonnet-4-5", "messages": huge})
    assert sonnet.input_tokens > 200_000


def test_gemini_images_stay_counted_by_their_bytes() -> None:
    """No bound is known for Gemini's images: inline, their bytes count, as before."""
    part = {"inline_data": {"mime_type": "image/png", "data": "A" * 30_000}}
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}, part]}]}
    assert estimate(GEMINI, body, model="gemini-2.5-flash").input_tokens > 10_000


def test_schemas_and_data_whose_type_is_no_media_are_no_media() -> None:
    """A JSON Schema's ``"type"`` may be an object (a parameter named type) or a list
    (``["string", "null"]``): the walker raised TypeError on them, a 500 from the proxy and the
    reservations API and an error out of every tracked client and LangChain call."""
    schema = {
        "type": "object",
        "properties": {"type": {"type": "string"}, "file_path": {"type": ["string", "null"]}},
    }
    tool = {"type": "function", "function": {"name": "save", "parameters": schema}}
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "save it"}]}],
        "tools": [tool],
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    assert estimate(OPENAI_CHAT, body).input_tokens == -(-len(encode(body)) // 3)
    history = [[{"type": "tool_use", "id": "t", "name": "f", "input": {"type": {"k": 1}}}]]
    assert media_of(history) == Media()


def test_an_image_asked_for_at_its_original_size_counts_that_bound() -> None:
    original = {"type": "input_image", "image_url": "https://e.com/a.png", "detail": "original"}
    body = _asking("gpt-5.4", original, key="input")
    assert estimate(OPENAI_RESPONSES, body).input_tokens >= ORIGINAL_IMAGE_INPUT_TOKENS


def test_a_prompt_openai_writes_to_its_cache_unasked_is_estimated_at_the_write_rate() -> None:
    """gpt-5.6 and later write the prompt to the cache at an implicit breakpoint (the openai
    SDK's ``prompt_cache_options``), billed 1.25 times input: estimated at the input rate, a
    first call with a long prompt was billed 135,470 µ$ against a 128,652 µ$ reservation."""
    body = {"model": "gpt-5.6-sol", "input": "x" * 30_000, "max_output_tokens": 10}
    result = estimate(OPENAI_RESPONSES, body)
    written = Usage(cache_write_5m_tokens=result.input_tokens, output_tokens=10)
    assert result.microdollars == -(-cost(written, "gpt-5.6-sol").total_picodollars // 1_000_000)
    older = estimate(OPENAI_RESPONSES, {**body, "model": "gpt-4o"})  # no write price: input
    read = Usage(input_tokens=older.input_tokens, output_tokens=10)
    assert older.microdollars == -(-cost(read, "gpt-4o").total_picodollars // 1_000_000)


SPEECH = {
    "model": "gpt-4o-audio-preview",
    "modalities": ["text", "audio"],
    "audio": {"voice": "alloy", "format": "wav"},
    "max_completion_tokens": 1000,
    "messages": [{"role": "user", "content": "Tell me a story"}],
}


TEXT_REQUEST = {key: value for key, value in SPEECH.items() if key not in ("modalities", "audio")}


@pytest.mark.parametrize(
    "asks",
    [
        {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
        {"modalities": ["audio", "text"]},
        {"audio": {"voice": "alloy", "format": "mp3"}},
    ],
    ids=["modalities-and-audio", "modalities", "audio"],
)
def test_a_request_for_speech_is_estimated_at_the_audio_output_rate(asks: dict[str, Any]) -> None:
    """Spoken output is billed at $80/M on gpt-4o-audio-preview, eight times its text: estimated
    at the text rate, such a call reserved 10,173 µ$ and was billed 76,550."""
    body = {**TEXT_REQUEST, **asks}
    result = estimate(OPENAI_CHAT, body)
    billed = cost(
        Usage(input_tokens=20, output_tokens=50, audio_output_tokens=950), "gpt-4o-audio-preview"
    )
    assert billed.total_microdollars == 76_550
    everything_spoken = Usage(input_tokens=result.input_tokens, audio_output_tokens=1000)
    exact = cost(everything_spoken, "gpt-4o-audio-preview").total_picodollars
    assert result.microdollars == -(-exact // PICODOLLARS_PER_MICRODOLLAR) > 76_550
    assert estimate(OPENAI_CHAT, TEXT_REQUEST).microdollars < 11_000  # text answers: text rate


def test_an_earlier_spoken_answer_brought_back_is_estimated_as_audio_input() -> None:
    """An assistant message naming an earlier answer's audio by id is billed as that audio, at
    the audio input rate ($40/M here): its content is not in the body, and one answer holds at
    most the model's output cap."""
    history = [
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "audio": {"id": "audio_abc"}},
        {"role": "user", "content": "Another one"},
    ]
    body = {**SPEECH, "messages": history}
    model = default_catalog().resolve("gpt-4o-audio-preview")
    assert model is not None
    assert model.max_output_tokens == 16_384
    result = estimate(OPENAI_CHAT, body)
    body_tokens = -(-len(encode(body)) // 3)
    assert result.input_tokens == body_tokens + 16_384
    brought_back = Usage(
        input_tokens=body_tokens, audio_input_tokens=16_384, audio_output_tokens=1000
    )
    exact = cost(brought_back, "gpt-4o-audio-preview").total_picodollars
    assert result.microdollars == -(-exact // PICODOLLARS_PER_MICRODOLLAR)
    # A model that takes no audio bills none: its catalog entry has no audio input price.
    plain = estimate(OPENAI_CHAT, {**body, "model": "gpt-4o"})
    assert plain.input_tokens == -(-len(encode({**body, "model": "gpt-4o"})) // 3)
