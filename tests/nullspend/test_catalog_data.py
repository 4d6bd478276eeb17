"""Invariants of the shipped pricing catalog data (packages/nullspend-core/.../catalog.json)."""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal, InvalidOperation
from importlib.resources import files
from typing import Any

import pytest

from nullspend.pricing import shipped_catalog
from nullspend.pricing.schema import CatalogFile, ModelEntry, PriceSet

CATALOG_TEXT = files("nullspend.pricing").joinpath("catalog.json").read_text(encoding="utf-8")
RAW: dict[str, Any] = json.loads(CATALOG_TEXT)
CATALOG = CatalogFile.model_validate(RAW)
MODELS: dict[str, ModelEntry] = {model.id: model for model in CATALOG.models}

CACHE_EXCEPTION_MARKER = "Cache-price exception"
PRICE_FIELDS = tuple(PriceSet.model_fields)

REQUIRED_IDS = {
    # OpenAI
    "gpt-4o",
    "gpt-4o-2024-05-13",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-nano",
    "gpt-4.5-preview",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-5.1",
    "gpt-5.2",
    "o1",
    "o1-mini",
    "o1-pro",
    "o3",
    "o3-mini",
    "o3-pro",
    "o4-mini",
    "gpt-4-turbo",
    "gpt-4",
    "gpt-3.5-turbo",
    "chatgpt-4o-latest",
    "gpt-4o-audio-preview",
    # Anthropic
    "claude-opus-4-20250514",
    "claude-opus-4-1-20250805",
    "claude-opus-4-5-20251101",
    "claude-sonnet-4-20250514",
    "claude-sonnet-4-5-20250929",
    "claude-haiku-4-5-20251001",
    "claude-3-7-sonnet-20250219",
    "claude-3-5-sonnet-20240620",
    "claude-3-5-sonnet-20241022",
    "claude-3-5-haiku-20241022",
    "claude-3-opus-20240229",
    "claude-3-haiku-20240307",
    "claude-3-sonnet-20240229",
    "claude-sonnet-4-6",
    "claude-opus-4-6",
    # Google
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "gemini-1.5-pro",
    "gemini-1.5-flash",
}

REQUIRED_ALIASES = {
    "gpt-4o-2024-08-06": "gpt-4o",
    "gpt-4o-2024-11-20": "gpt-4o",
    "gpt-4o-mini-2024-07-18": "gpt-4o-mini",
    "gpt-4.1-2025-04-14": "gpt-4.1",
    "o3-2025-04-16": "o3",
    "gpt-5-2025-08-07": "gpt-5",
    "claude-sonnet-4": "claude-sonnet-4-20250514",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-3-5-sonnet-latest": "claude-3-5-sonnet-20241022",
    "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
    "claude-3-opus-latest": "claude-3-opus-20240229",
}

TIERED_AT_200K = ("claude-sonnet-4-20250514", "claude-sonnet-4-5-20250929", "gemini-2.5-pro")


def _price_sets(model: ModelEntry) -> list[tuple[str, PriceSet]]:
    sets = [("base", model.prices)]
    sets += [(f"tier>{tier.above_prompt_tokens}", tier.prices) for tier in model.tiers]
    for name, served in model.service_tiers.items():
        sets.append((name, served.prices))
        sets += [(f"{name}>{t.above_prompt_tokens}", t.prices) for t in served.tiers]
    return sets


def _prices(price_set: PriceSet) -> dict[str, Decimal]:
    return {
        field: Decimal(value)
        for field in PRICE_FIELDS
        if (value := getattr(price_set, field)) is not None
    }


def _raw_price_strings() -> list[tuple[str, str, object]]:
    found = []
    for model in RAW["models"]:
        price_sets = [model["prices"], *(tier["prices"] for tier in model.get("tiers", ()))]
        for served in model.get("service_tiers", {}).values():
            price_sets += [served["prices"], *(tier["prices"] for tier in served.get("tiers", ()))]
        for price_set in price_sets:
            found += [(model["id"], field, value) for field, value in price_set.items()]
    return found


def test_catalog_is_large_enough() -> None:
    assert len(CATALOG.models) >= 60


def test_every_id_and_alias_is_unique() -> None:
    seen: dict[str, str] = {}
    for model in CATALOG.models:
        assert len(set(model.aliases)) == len(model.aliases), model.id
        for name in (model.id, *model.aliases):
            key = name.lower()  # the catalog resolves names case-insensitively
            assert key not in seen, f"{name!r} of {model.id!r} is already a name of {seen[key]!r}"
            seen[key] = model.id


def test_required_models_are_present() -> None:
    missing = REQUIRED_IDS - MODELS.keys()
    assert not missing, sorted(missing)


@pytest.mark.parametrize(("alias", "model_id"), sorted(REQUIRED_ALIASES.items()))
def test_required_aliases(alias: str, model_id: str) -> None:
    assert alias in MODELS[model_id].aliases


def test_aliases_carry_no_routing_prefixes() -> None:
    """Provider prefixes, Bedrock ids and Vertex ids are resolved by rules in code."""
    for model in CATALOG.models:
        for alias in model.aliases:
            assert "/" not in alias, (model.id, alias)
            assert "@" not in alias, (model.id, alias)
            assert not re.match(r"^([a-z-]+\.)?anthropic\.", alias), (model.id, alias)
            assert not re.search(r"-v\d+(:\d+)?$", alias), (model.id, alias)


def test_entries_are_sorted_by_provider_then_id() -> None:
    keys = [(model.provider, model.id) for model in CATALOG.models]
    assert keys == sorted(keys)


def test_more_newer_models_are_present() -> None:
    ids = MODELS.keys()
    assert any(re.match(r"^gpt-5\.[1-9]", model_id) for model_id in ids)
    assert any(re.match(r"^claude-(opus|sonnet|haiku)-[45]-[5-9]", model_id) for model_id in ids)
    assert any(model_id.startswith("gemini-3") for model_id in ids)


@pytest.mark.parametrize("model_id", TIERED_AT_200K)
def test_long_context_tier_thresholds(model_id: str) -> None:
    tiers = MODELS[model_id].tiers
    assert [tier.above_prompt_tokens for tier in tiers] == [200_000]


def test_tier_prices_are_at_least_the_base_prices() -> None:
    for model in CATALOG.models:
        base = _prices(model.prices)
        for tier in model.tiers:
            tier_prices = _prices(tier.prices)
            # A tier replaces the whole price set, so it must name every price the base names.
            assert tier_prices.keys() == base.keys(), (model.id, tier.above_prompt_tokens)
            for field, price in tier_prices.items():
                assert price >= base[field], (model.id, tier.above_prompt_tokens, field)


def test_priority_costs_more_and_flex_less_than_standard() -> None:
    """Each service tier names the prices it changes, in the direction its name says, at the
    model's own long-context thresholds."""
    priced = 0
    for model in CATALOG.models:
        standard = _prices(model.prices)
        thresholds = {tier.above_prompt_tokens for tier in model.tiers}
        for name, served in model.service_tiers.items():
            prices = _prices(served.prices)
            assert {"input", "output"} <= prices.keys() <= standard.keys(), (model.id, name)
            for field, price in prices.items():
                cheaper, dearer = (price, standard[field])[:: 1 if name == "flex" else -1]
                assert cheaper < dearer, (model.id, name, field)
            assert {t.above_prompt_tokens for t in served.tiers} <= thresholds, (model.id, name)
            priced += 1
    assert priced >= 50


def test_at_every_prompt_length_priority_costs_no_less_and_flex_no_more() -> None:
    """As compiled, below and above each long-context threshold."""
    for model in shipped_catalog():
        lengths = [1, *(threshold + 1 for threshold, _ in model.tiers)]
        for name, served in model.service_tiers.items():
            for length in lengths:
                standard, tier = model.prices_for(length)[0], served.prices_for(length)[0]
                low, high = (tier, standard) if name == "flex" else (standard, tier)
                assert low.input <= high.input, (model.id, name, length)
                assert low.output <= high.output, (model.id, name, length)


def test_tiers_have_distinct_thresholds() -> None:
    for model in CATALOG.models:
        thresholds = [tier.above_prompt_tokens for tier in model.tiers]
        assert len(set(thresholds)) == len(thresholds), model.id


def test_anthropic_cache_price_ratios() -> None:
    """Cache read 0.1x, 5-minute write 1.25x, 1-hour write 2x input, unless notes explain."""
    ratios = {
        "cache_read": Decimal("0.1"),
        "cache_write_5m": Decimal("1.25"),
        "cache_write_1h": Decimal("2"),
    }
    checked = 0
    for model in CATALOG.models:
        if model.provider != "anthropic":
            continue
        if CACHE_EXCEPTION_MARKER in (model.notes or ""):
            continue
        for label, price_set in _price_sets(model):
            prices = _prices(price_set)
            for field, ratio in ratios.items():
                assert field in prices, (model.id, label, field)
                assert prices[field] == prices["input"] * ratio, (model.id, label, field)
        checked += 1
    assert checked >= 15


def test_anthropic_cache_exceptions_still_price_every_cache_kind() -> None:
    for model in CATALOG.models:
        if model.provider == "anthropic":
            for label, price_set in _price_sets(model):
                prices = _prices(price_set)
                for field in ("cache_read", "cache_write_5m", "cache_write_1h"):
                    assert field in prices, (model.id, label, field)
                assert prices["cache_read"] < prices["input"] < prices["cache_write_5m"]


def test_prices_are_exact_decimals_with_at_most_six_places() -> None:
    prices = _raw_price_strings()
    assert prices
    for model_id, field, value in prices:
        assert isinstance(value, str), (model_id, field, value)
        assert re.fullmatch(r"\d+(\.\d{1,6})?", value), (model_id, field, value)
        try:
            price = Decimal(value)
        except InvalidOperation:  # pragma: no cover - the pattern above already rules it out
            pytest.fail(f"{model_id} {field}: {value!r} is not a decimal")
        assert price.is_finite(), (model_id, field)
        assert price >= 0, (model_id, field)
        exponent = price.as_tuple().exponent
        assert isinstance(exponent, int)
        assert exponent >= -6, (model_id, field, value)


def test_input_and_output_prices_are_positive() -> None:
    for model in CATALOG.models:
        for label, price_set in _price_sets(model):
            assert Decimal(price_set.input) > 0, (model.id, label)
            assert Decimal(price_set.output) > 0, (model.id, label)


def test_checked_dates_are_not_in_the_future() -> None:
    today = dt.date.today()
    for model in CATALOG.models:
        assert model.checked <= today, model.id


def test_sources_and_notes() -> None:
    for model in CATALOG.models:
        assert model.source.startswith("https://"), model.id
        assert model.notes, model.id
        assert "genai-prices" in model.notes, model.id
        assert "litellm" in model.notes, model.id


def test_output_limit_fits_the_context_window() -> None:
    for model in CATALOG.models:
        if model.context_window is not None and model.max_output_tokens is not None:
            assert model.max_output_tokens <= model.context_window, model.id
