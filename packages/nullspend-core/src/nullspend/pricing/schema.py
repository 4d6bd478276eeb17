"""The pricing catalog's file format, shared by the shipped catalog and user override files.

Prices are decimal strings in US dollars per million tokens (web search: per thousand requests),
so that they are read exactly. A missing price falls back as documented on each field.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nullspend.money import (
    dollars_per_million_to_picodollars_per_token,
    dollars_per_thousand_to_picodollars_per_unit,
)

Provider = Literal["openai", "anthropic", "google"]
ServiceTierName = Literal["priority", "flex"]
"""OpenAI's processing tiers priced apart from the standard one (``service_tier``)."""


def _exact_per_million(price: str) -> str:
    dollars_per_million_to_picodollars_per_token(price)  # raises for negative or inexact
    return price


def _exact_per_thousand(price: str) -> str:
    dollars_per_thousand_to_picodollars_per_unit(price)
    return price


DecimalString = Annotated[str, AfterValidator(_exact_per_million)]
PerThousandString = Annotated[str, AfterValidator(_exact_per_thousand)]


class PriceSet(BaseModel):
    """Prices of one model, or of one long-context tier of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: DecimalString
    output: DecimalString
    cache_read: DecimalString | None = None
    """Cached input. Missing: the input price."""
    cache_write_5m: DecimalString | None = None
    """Writing a 5-minute (default) prompt cache entry. Missing: the input price."""
    cache_write_1h: DecimalString | None = None
    """Writing a 1-hour prompt cache entry. Missing: the 5-minute write price."""
    audio_input: DecimalString | None = None
    """Missing: the input price."""
    audio_output: DecimalString | None = None
    """Missing: the output price."""
    web_search_per_thousand: PerThousandString | None = None
    """Server-side web search, $ per 1,000 requests. Missing: searches are free."""


class Tier(BaseModel):
    """Prices that replace the base prices for a whole request once its prompt is long enough."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    above_prompt_tokens: int = Field(gt=0)
    """The tier applies when input + cache reads + cache writes + audio input exceed this."""
    prices: PriceSet


class ServiceTier(BaseModel):
    """The prices of a call served in one of the provider's processing tiers (OpenAI's
    ``service_tier`` in its answer): the model's whole price set, long-context tiers included,
    is replaced. A price the tier leaves out is the standard one (web search, say)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: PriceSet
    tiers: tuple[Tier, ...] = ()
    """Long-context tiers of this service tier. Empty: its prices apply at any prompt length."""


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    """The canonical name, as the provider's API reports it (dated where the provider dates it)."""
    provider: Provider
    aliases: tuple[str, ...] = ()
    """Other names of exactly this model and price: undated and ``-latest`` names, snapshots."""
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    """The model's output cap, the largest any request can get (a beta header's included): what
    an estimate assumes when a request sets no max tokens, and the most it counts when one asks
    for more (the provider refuses that)."""
    image_input_tokens: int | None = Field(default=None, gt=0)
    """The most input tokens one image can bill, where it differs from its provider's (see
    ``pricing.estimate.IMAGE_INPUT_TOKENS``): what an estimate counts for each image."""
    prices: PriceSet
    tiers: tuple[Tier, ...] = ()
    service_tiers: dict[ServiceTierName, ServiceTier] = {}
    """Prices of the processing tiers that cost more or less than the standard one."""
    source: str
    """Where the prices come from (the provider's pricing page)."""
    checked: dt.date
    """When the prices were last checked against the source."""
    notes: str | None = None

    def __hash__(self) -> int:
        # Pydantic's own hash hashes every field, and service_tiers is a dict: equal entries
        # share their id and prices.
        return hash((self.id, self.prices, self.tiers))


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    models: tuple[ModelEntry, ...]


class ModelOverride(BaseModel):
    """An override file entry: a new model (prices required) or new prices for a known one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    provider: Provider | None = None
    aliases: tuple[str, ...] = ()
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    image_input_tokens: int | None = Field(default=None, gt=0)
    prices: PriceSet | None = None
    tiers: tuple[Tier, ...] | None = None
    service_tiers: dict[ServiceTierName, ServiceTier] | None = None
    source: str | None = None
    checked: dt.date | None = None
    notes: str | None = None


class OverrideFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    models: tuple[ModelOverride, ...]
