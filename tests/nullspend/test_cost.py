"""Costs against hand-computed figures. A price in $ per million tokens is that many
microdollars per token, so each expected value below is tokens x $/M, summed, rounded once."""

import dataclasses
from decimal import ROUND_HALF_UP, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nullspend.errors import UnpricedModelError
from nullspend.pricing import PricedModel, cost, shipped_catalog, total_picodollars
from nullspend.usage import Usage

CASES = [
    pytest.param(
        "claude-sonnet-4-20250514",
        Usage(
            input_tokens=1_000,
            cache_read_tokens=150_000,
            cache_write_5m_tokens=20_000,
            output_tokens=2_000,
        ),
        # 1000x3 + 150000x0.30 + 20000x3.75 + 2000x15
        3_000 + 45_000 + 75_000 + 30_000,
        id="cache-heavy-sonnet-4",
    ),
    pytest.param(
        "claude-opus-4-1-20250805",
        Usage(
            input_tokens=500,
            cache_write_5m_tokens=4_000,
            cache_write_1h_tokens=10_000,
            output_tokens=1_000,
        ),
        # 500x15 + 4000x18.75 + 10000x30 + 1000x75
        7_500 + 75_000 + 300_000 + 75_000,
        id="one-hour-cache-writes-opus-4-1",
    ),
    pytest.param(
        "o3",
        Usage(input_tokens=1_000, output_tokens=30_000, reasoning_tokens=28_000),
        # 1000x2 + 30000x8: reasoning is inside output, priced once
        2_000 + 240_000,
        id="reasoning-heavy-o3",
    ),
    pytest.param(
        "gpt-4o",
        Usage(input_tokens=2_000, cache_read_tokens=8_000, output_tokens=500),
        # 2000x2.50 + 8000x1.25 + 500x10
        5_000 + 10_000 + 5_000,
        id="cached-gpt-4o",
    ),
    pytest.param(
        "claude-sonnet-4-20250514",
        Usage(input_tokens=50_000, cache_read_tokens=150_000, output_tokens=1_000),
        # prompt exactly 200,000 tokens: base prices. 50000x3 + 150000x0.30 + 1000x15
        150_000 + 45_000 + 15_000,
        id="sonnet-4-at-long-context-threshold",
    ),
    pytest.param(
        "claude-sonnet-4-20250514",
        Usage(input_tokens=50_001, cache_read_tokens=150_000, output_tokens=1_000),
        # one token above: the whole request at long-context prices (cache reads count).
        # 50001x6 + 150000x0.60 + 1000x22.50
        300_006 + 90_000 + 22_500,
        id="sonnet-4-one-above-long-context-threshold",
    ),
    pytest.param(
        "claude-sonnet-4-5-20250929",
        Usage(input_tokens=100_000, cache_write_5m_tokens=100_001, output_tokens=10),
        # cache writes count toward the threshold too: 100000x6 + 100001x7.50 + 10x22.50
        # = 600000 + 750007.5 + 225 = 1350232.5, rounded half up once
        1_350_233,
        id="sonnet-4-5-long-context-from-cache-writes",
    ),
    pytest.param(
        "gemini-2.5-pro",
        Usage(input_tokens=200_000, output_tokens=1_000),
        # at the threshold: 200000x1.25 + 1000x10
        250_000 + 10_000,
        id="gemini-2.5-pro-at-threshold",
    ),
    pytest.param(
        "gemini-2.5-pro",
        Usage(input_tokens=200_001, output_tokens=1_000),
        # one above: 200001x2.50 + 1000x15 = 515002.5, rounded half up once
        515_003,
        id="gemini-2.5-pro-one-above-threshold",
    ),
    pytest.param(
        "gpt-4o-mini",
        Usage(input_tokens=3, cache_read_tokens=1),
        # 3x0.15 + 1x0.075 = 0.525: rounding each part (0 + 0) would lose the microdollar
        1,
        id="rounded-once-not-per-component",
    ),
]


@pytest.mark.parametrize(("model", "usage", "microdollars"), CASES)
def test_hand_computed_costs(model: str, usage: Usage, microdollars: int) -> None:
    assert cost(usage, model).total_microdollars == microdollars


@pytest.mark.parametrize(
    ("alias", "model"),
    [
        ("claude-sonnet-4", "claude-sonnet-4-20250514"),
        ("claude-3-5-sonnet-latest", "claude-3-5-sonnet-20241022"),
        ("anthropic/claude-sonnet-4-20250514", "claude-sonnet-4-20250514"),
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4-20250514"),
        ("anthropic.claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet-20241022"),
        ("claude-sonnet-4@20250514", "claude-sonnet-4-20250514"),
        ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet-20241022"),
        ("openai/gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("GPT-4o-mini", "gpt-4o-mini"),
        ("models/gemini-2.5-pro", "gemini-2.5-pro"),
    ],
)
def test_aliases_price_like_their_model(alias: str, model: str) -> None:
    usage = Usage(input_tokens=1_234, cache_read_tokens=99, output_tokens=567)
    resolved = shipped_catalog().resolve(alias)
    assert resolved is not None
    assert resolved.id == model
    assert cost(usage, alias).total_picodollars == cost(usage, model).total_picodollars


@pytest.mark.parametrize("name", ["my-private-model", "gpt-4o-but-not", "", "anthropic/"])
def test_unknown_model_is_unpriced_never_zero(name: str) -> None:
    assert shipped_catalog().resolve(name) is None
    with pytest.raises(UnpricedModelError, match="not in the pricing catalog"):
        cost(Usage(input_tokens=1), name)


def test_breakdown_shows_reasoning_apart_from_output() -> None:
    lines = {line.component: line for line in cost(CASES[2].values[1], "o3").lines()}
    assert lines["output"].quantity == 2_000
    assert lines["reasoning"].quantity == 28_000
    assert lines["reasoning"].microdollars == 224_000


def test_long_context_tier_is_reported() -> None:
    assert cost(CASES[5].values[1], "claude-sonnet-4-20250514").tier_threshold == 200_000
    assert cost(CASES[4].values[1], "claude-sonnet-4-20250514").tier_threshold is None


COUNTS = st.integers(min_value=0, max_value=3_000_000)
MODELS = sorted(model.id for model in shipped_catalog())


@given(
    model=st.sampled_from(MODELS),
    counts=st.tuples(*[COUNTS] * 8),
    reasoning_share=st.fractions(min_value=0, max_value=1),
)
def test_integer_engine_matches_decimal_prices_and_breakdown_adds_up(
    model: str, counts: tuple[int, ...], reasoning_share: object
) -> None:
    """The engine's integer arithmetic against an independent Decimal computation from the
    catalog's own decimal strings, with the documented fallbacks."""
    inp, read, w5, w1, out, a_in, a_out, searches = counts
    reasoning = int(out * reasoning_share)  # type: ignore[operator]
    usage = Usage(
        input_tokens=inp,
        cache_read_tokens=read,
        cache_write_5m_tokens=w5,
        cache_write_1h_tokens=w1,
        output_tokens=out,
        reasoning_tokens=reasoning,
        audio_input_tokens=a_in,
        audio_output_tokens=a_out,
        web_search_requests=searches % 50,
    )
    result = cost(usage, model)
    entry = result.model.entry
    prices = entry.prices
    for tier in sorted(entry.tiers, key=lambda t: t.above_prompt_tokens, reverse=True):
        if usage.prompt_tokens > tier.above_prompt_tokens:
            prices = tier.prices
            break
    d = Decimal
    write_5m = d(prices.cache_write_5m or prices.input)
    dollars = (
        inp * d(prices.input)
        + read * d(prices.cache_read or prices.input)
        + w5 * write_5m
        + w1 * (d(prices.cache_write_1h) if prices.cache_write_1h else write_5m)
        + out * d(prices.output)
        + a_in * d(prices.audio_input or prices.input)
        + a_out * d(prices.audio_output or prices.output)
    ) / 1_000_000 + usage.web_search_requests * d(prices.web_search_per_thousand or 0) / 1_000
    expected = (dollars * 1_000_000).quantize(d(1), rounding=ROUND_HALF_UP)
    assert result.total_microdollars == int(expected)
    assert sum(line.microdollars for line in result.lines()) == result.total_microdollars
    assert total_picodollars(usage, result.model) == result.total_picodollars


TIERED = [model for model in shipped_catalog() if model.tiers]


@pytest.mark.parametrize("model", TIERED, ids=lambda model: model.id)
def test_every_long_context_boundary(model: PricedModel) -> None:
    """Exactly at a tier's threshold the lower prices apply; one prompt token above, the tier's
    prices apply to the whole request (figures from the entry's own decimal strings)."""
    tiers = sorted(model.entry.tiers, key=lambda tier: tier.above_prompt_tokens)
    below = model.entry.prices
    for tier in tiers:
        at = tier.above_prompt_tokens
        for prompt, prices in ((at, below), (at + 1, tier.prices)):
            usage = Usage(input_tokens=prompt, output_tokens=1_000)
            dollars = (prompt * Decimal(prices.input) + 1_000 * Decimal(prices.output)) / 10**6
            expected = (dollars * 10**6).quantize(Decimal(1), rounding=ROUND_HALF_UP)
            assert cost(usage, model.id).total_microdollars == expected, (model.id, prompt)
        below = tier.prices


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Usage)])
def test_usage_refuses_a_negative_count_in_any_field(field: str) -> None:
    with pytest.raises(ValueError, match=f"cannot be negative: {{'{field}': -1}}"):
        Usage(**{field: -1})
    with pytest.raises(ValueError, match="cannot be negative"):  # however large the others
        Usage(**{"input_tokens": 2**70, field: -(2**65)})


@pytest.mark.parametrize(
    ("service_tier", "microdollars"),
    [
        # gpt-5 per M: $1.25 input, $0.125 cached, $10 output; web search $10 per 1,000
        (None, 125_000 + 25_000 + 100_000 + 20_000),
        ("scale", 125_000 + 25_000 + 100_000 + 20_000),  # not priced apart: standard
        # priority: $2.50, $0.25, $20; the tier leaves web search at the standard price
        ("priority", 250_000 + 50_000 + 200_000 + 20_000),
        ("flex", 62_500 + 12_500 + 50_000 + 20_000),  # flex: $0.625, $0.0625, $5
        ("fast", 250_000 + 50_000 + 200_000 + 20_000),  # answered and billed as priority
    ],
)
def test_a_service_tier_prices_the_call_at_its_own_rates(
    service_tier: str | None, microdollars: int
) -> None:
    usage = Usage(
        input_tokens=100_000,
        cache_read_tokens=200_000,
        output_tokens=10_000,
        web_search_requests=2,
    )
    priced = cost(usage, "gpt-5-2025-08-07", service_tier=service_tier)
    assert priced.total_microdollars == microdollars
    assert priced.model.id == "gpt-5"


def test_a_service_tier_has_its_own_long_context_prices() -> None:
    """gpt-5.4 above 272k prompt tokens: $5 input standard, $2.50 in flex (and $1.25 below)."""
    long, short = Usage(input_tokens=300_000), Usage(input_tokens=200_000)
    assert cost(long, "gpt-5.4").total_microdollars == 1_500_000
    flex_long = cost(long, "gpt-5.4", service_tier="flex")
    assert (flex_long.total_microdollars, flex_long.tier_threshold) == (750_000, 272_000)
    assert cost(short, "gpt-5.4", service_tier="flex").total_microdollars == 250_000


def test_a_model_priced_in_a_tier_knows_the_others_and_every_model_hashes() -> None:
    catalog = shipped_catalog()
    standard = catalog.resolve("gpt-5")
    priority = catalog.resolve("gpt-5", "PRIORITY")  # as named, in any case
    assert standard is not None
    assert priority is not None
    assert priority.serving("flex") is standard.serving("flex") is catalog.resolve("gpt-5", "flex")
    assert priority.prices.input == 2 * standard.prices.input
    assert len({*catalog, *(model.entry for model in catalog)}) == 2 * len(catalog)
