"""Exact cost of a model call: integer picodollars summed, rounded once to microdollars."""

from __future__ import annotations

from dataclasses import dataclass

from nullspend.errors import UnpricedModelError
from nullspend.limits import BIGINT_MAX, MAX_CALL_MICRODOLLARS
from nullspend.money import PICODOLLARS_PER_MICRODOLLAR, picodollars_to_microdollars
from nullspend.pricing.catalog import Catalog, PricedModel, Prices, default_catalog
from nullspend.usage import Usage
from nullspend.wire.base import PricedPart, Reading


@dataclass(frozen=True, slots=True)
class CostLine:
    """One priced component of a call. ``microdollars`` is apportioned so the lines add up to
    the total exactly (largest remainder); ``picodollars`` is the exact amount."""

    component: str
    quantity: int
    picodollars_per_unit: int
    picodollars: int
    microdollars: int


@dataclass(slots=True)  # not frozen: frozen init costs ~0.5 us, and this is built per call
class Cost:
    model: PricedModel
    usage: Usage
    prices: Prices
    tier_threshold: int | None
    """The long-context tier applied (its prompt-token threshold), or None for base prices."""
    total_picodollars: int

    @property
    def total_microdollars(self) -> int:
        return picodollars_to_microdollars(self.total_picodollars)

    def lines(self) -> tuple[CostLine, ...]:
        """The breakdown per component (reasoning shown apart from the rest of the output)."""
        usage, prices = self.usage, self.prices
        parts = (
            ("input", usage.input_tokens, prices.input),
            ("cache_read", usage.cache_read_tokens, prices.cache_read),
            ("cache_write_5m", usage.cache_write_5m_tokens, prices.cache_write_5m),
            ("cache_write_1h", usage.cache_write_1h_tokens, prices.cache_write_1h),
            ("output", usage.output_tokens - usage.reasoning_tokens, prices.output),
            ("reasoning", usage.reasoning_tokens, prices.output),
            ("audio_input", usage.audio_input_tokens, prices.audio_input),
            ("audio_output", usage.audio_output_tokens, prices.audio_output),
            ("web_search", usage.web_search_requests, prices.web_search),
        )
        exact = [quantity * price for _, quantity, price in parts]
        floors = [amount // PICODOLLARS_PER_MICRODOLLAR for amount in exact]
        # Hand the microdollars the rounding adds to the lines with the largest remainders.
        extra = self.total_microdollars - sum(floors)
        by_remainder = sorted(
            range(len(parts)), key=lambda i: exact[i] % PICODOLLARS_PER_MICRODOLLAR, reverse=True
        )
        for i in by_remainder[:extra]:
            floors[i] += 1
        return tuple(
            CostLine(name, quantity, price, amount, micro)
            for (name, quantity, price), amount, micro in zip(parts, exact, floors, strict=True)
        )


def price_usage(usage: Usage, model: PricedModel) -> Cost:
    """Price usage with a resolved catalog model."""
    prices, threshold = model.prices_for(usage.prompt_tokens)
    return Cost(model, usage, prices, threshold, _picodollars(usage, prices))


def total_picodollars(usage: Usage, model: PricedModel) -> int:
    """``price_usage(usage, model).total_picodollars`` without building the breakdown: for the
    paths that price every call and need only the amount."""
    # Most models have one price set: no need to count the prompt to choose it.
    prices = model.prices_for(usage.prompt_tokens)[0] if model.tiers else model.prices
    return _picodollars(usage, prices)


def parts_picodollars(
    usage: Usage,
    model: PricedModel,
    extra: tuple[PricedPart, ...],
    catalog: Catalog | None = None,
    service_tier: str | None = None,
) -> int | None:
    """What a call bills: ``usage`` at ``model`` (the call's, resolved) and each of a reading's
    ``extra`` parts at its own model (the call's where it names none), each priced apart, as
    the provider bills each pass apart (a long-context tier applies per pass). None when a
    part's model is not in the catalog: the call is then charged its estimate, never less."""
    total = total_picodollars(usage, model)
    for part in extra:
        priced = (
            model
            if part.model is None
            else (catalog or default_catalog()).resolve(part.model, service_tier)
        )
        if priced is None:
            return None
        total += total_picodollars(part.usage, priced)
    return total


def reading_cost(
    reading: Reading, model: str | None, catalog: Catalog | None = None
) -> tuple[PricedModel | None, int | None]:
    """What a call's answer (or stream) bills, as every surface records it: the call's model
    (the one the answer names, else ``model``, the one asked for) resolved in the tier it was
    served in, and the microdollars of its usage at that model and of each part billed besides
    at its own (``parts_picodollars``). The cost is None when there is no usage or a model is
    not in the catalog: the call is then charged its estimate, never zero."""
    name = reading.model or model
    priced = (catalog or default_catalog()).resolve(name, reading.service_tier) if name else None
    if reading.usage is None or priced is None:
        return priced, None
    picodollars = parts_picodollars(
        reading.usage, priced, reading.extra, catalog, reading.service_tier
    )
    return priced, None if picodollars is None else picodollars_to_microdollars(picodollars)


def unrecordable(cost_microdollars: int | None, usage: Usage | None) -> bool:
    """Whether an answer's usage is none a call can have (counts past a BIGINT, a price past one
    call's most: a broken gateway's): a settle carrying it would be refused, leaving the call
    unrecorded and its reservation held until it expired; it is charged its estimate instead."""
    return (cost_microdollars is not None and cost_microdollars > MAX_CALL_MICRODOLLARS) or (
        usage is not None and usage.total_tokens + usage.web_search_requests > BIGINT_MAX
    )


def _picodollars(usage: Usage, prices: Prices) -> int:
    return (
        usage.input_tokens * prices.input
        + usage.cache_read_tokens * prices.cache_read
        + usage.cache_write_5m_tokens * prices.cache_write_5m
        + usage.cache_write_1h_tokens * prices.cache_write_1h
        + usage.output_tokens * prices.output
        + usage.audio_input_tokens * prices.audio_input
        + usage.audio_output_tokens * prices.audio_output
        + usage.web_search_requests * prices.web_search
    )


def cost(
    usage: Usage, model: str, catalog: Catalog | None = None, *, service_tier: str | None = None
) -> Cost:
    """Price usage of a model named as a provider or a user names it, served in
    ``service_tier`` when given (OpenAI's "priority" or "flex"; other tiers are standard).

    Raises UnpricedModelError when the name is not in the catalog: an unknown model is never $0.
    """
    priced = (catalog or default_catalog()).resolve(model, service_tier)
    if priced is None:
        raise UnpricedModelError(model)
    return price_usage(usage, priced)
