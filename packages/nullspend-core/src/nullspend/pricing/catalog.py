"""The pricing catalog: shipped model prices, user overrides, and model-name resolution."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import astuple, dataclass, field, replace
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from nullspend.errors import PricingFileError
from nullspend.money import (
    dollars_per_million_to_picodollars_per_token as per_token,
)
from nullspend.money import (
    dollars_per_thousand_to_picodollars_per_unit as per_unit,
)
from nullspend.pricing.schema import CatalogFile, ModelEntry, OverrideFile, PriceSet, Tier
from nullspend.settings import CoreSettings

_File = TypeVar("_File", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Prices:
    """A price set compiled to integer picodollars per token (web search: per request)."""

    input: int
    output: int
    cache_read: int
    cache_write_5m: int
    cache_write_1h: int
    audio_input: int
    audio_output: int
    web_search: int

    @classmethod
    def compile(cls, prices: PriceSet) -> Prices:
        input_ = per_token(prices.input)
        output = per_token(prices.output)
        write_5m = input_ if prices.cache_write_5m is None else per_token(prices.cache_write_5m)
        return cls(
            input=input_,
            output=output,
            cache_read=input_ if prices.cache_read is None else per_token(prices.cache_read),
            cache_write_5m=write_5m,
            cache_write_1h=write_5m
            if prices.cache_write_1h is None
            else per_token(prices.cache_write_1h),
            audio_input=input_ if prices.audio_input is None else per_token(prices.audio_input),
            audio_output=output if prices.audio_output is None else per_token(prices.audio_output),
            web_search=0
            if prices.web_search_per_thousand is None
            else per_unit(prices.web_search_per_thousand),
        )


@dataclass(frozen=True, slots=True)
class PricedModel:
    """A catalog model, ready to price usage."""

    id: str
    provider: str
    aliases: tuple[str, ...]
    context_window: int | None
    max_output_tokens: int | None
    prices: Prices
    tiers: tuple[tuple[int, Prices], ...]
    """(threshold, prices), highest threshold first: the first one exceeded applies."""
    source: str
    checked: dt.date
    entry: ModelEntry
    """The catalog entry as written, decimal prices included."""
    # Left out of equality and hashing: a priced copy holds the others (the entry has them all).
    service_tiers: Mapping[str, PricedModel] = field(hash=False, compare=False)
    """The model as priced in each processing tier that the catalog prices apart."""

    @classmethod
    def compile(cls, entry: ModelEntry) -> PricedModel:
        model = cls(
            id=entry.id,
            provider=entry.provider,
            aliases=entry.aliases,
            context_window=entry.context_window,
            max_output_tokens=entry.max_output_tokens,
            prices=Prices.compile(entry.prices),
            tiers=_compiled_tiers(entry.tiers),
            source=entry.source,
            checked=entry.checked,
            entry=entry,
            service_tiers={},
        )
        if not entry.service_tiers:
            return model
        standard = entry.prices.model_dump(exclude_none=True)

        def over_standard(prices: PriceSet) -> Prices:
            # A price a service tier leaves out is the standard one.
            merged = {**standard, **prices.model_dump(exclude_none=True)}
            return Prices.compile(PriceSet.model_validate(merged))

        served: dict[str, PricedModel] = {}
        for name, tier in entry.service_tiers.items():
            prices = over_standard(tier.prices)
            long_context = _compiled_tiers(tier.tiers, over_standard) or tuple(
                # Long prompts in a tier priced at one length only: the higher of its price and
                # the standard long-context one (a cap must not rest on a price nobody gave).
                (threshold, _higher(prices, standard_long))
                for threshold, standard_long in model.tiers
            )
            served[name] = replace(model, prices=prices, tiers=long_context)
        # Each priced copy knows the others too: resolve(..., "priority").serving("flex").
        for served_name, copy in served.items():
            served[served_name] = replace(copy, service_tiers=served)
        return replace(model, service_tiers=served)

    def serving(self, service_tier: str | None) -> PricedModel:
        """The model as priced in ``service_tier`` (as a request or an answer names it, in any
        case, or None): standard prices for a tier the catalog does not price apart
        ("default", "auto", "scale")."""
        if not service_tier:
            return self
        name = service_tier.lower()
        return self.service_tiers.get(_TIER_ALIASES.get(name, name), self)

    def prices_for(self, prompt_tokens: int) -> tuple[Prices, int | None]:
        """The prices a request with this many prompt tokens pays, and the tier threshold used."""
        for threshold, prices in self.tiers:
            if prompt_tokens > threshold:
                return prices, threshold
        return self.prices, None


def _higher(prices: Prices, other: Prices) -> Prices:
    """Each price the higher of the two sets' (both compiled: a price left out is already its
    fallback)."""
    return Prices(*(max(pair) for pair in zip(astuple(prices), astuple(other), strict=True)))


def _compiled_tiers(
    tiers: Iterable[Tier], compile: Callable[[PriceSet], Prices] = Prices.compile
) -> tuple[tuple[int, Prices], ...]:
    """Long-context tiers as ``PricedModel.tiers`` keeps them: highest threshold first."""
    ordered = sorted(tiers, key=lambda tier: tier.above_prompt_tokens, reverse=True)
    return tuple((t.above_prompt_tokens, compile(t.prices)) for t in ordered)


# OpenAI answers a request for "fast" processing as served in "priority", and bills it so.
_TIER_ALIASES = {"fast": "priority"}


# Names that carry a routing prefix before the provider's own model id.
_PREFIXES = ("openai/", "anthropic/", "google/", "gemini/", "models/", "vertex_ai/", "bedrock/")
# Bedrock: [region.]anthropic.<model>[-v<N>[:<M>]], e.g. us.anthropic.claude-sonnet-4-20250514-v1:0
_BEDROCK = re.compile(
    r"^(?:(?:us|eu|apac|au|jp|ca|us-gov|global)\.)?anthropic\.(?P<name>.+?)(?:-v\d+(?::\d+)?)?$"
)
# Vertex AI: <model>@<date>, e.g. claude-sonnet-4@20250514 or claude-3-5-sonnet-v2@20241022.
_VERTEX = re.compile(r"^(?P<name>.+?)(?:-v\d+)?@(?P<date>\d{8})$")
_RESOLVE_CACHE_SIZE = 4096


class Catalog:
    """Models by id and alias. Build one with :func:`load_catalog` or from entries directly."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self._models: dict[str, PricedModel] = {}
        self._names: dict[str, PricedModel] = {}
        for entry in entries:
            model = PricedModel.compile(entry)
            if model.id in self._models:
                raise PricingFileError(f"model {model.id!r} is listed twice in the catalog")
            self._models[model.id] = model
            for name in (model.id, *model.aliases):
                clash = self._names.get(name.lower())
                if clash is not None:
                    raise PricingFileError(
                        f"name {name!r} of {model.id!r} is already a name of {clash.id!r}"
                    )
                self._names[name.lower()] = model
        self._resolved: dict[str, PricedModel | None] = {}

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[PricedModel]:
        return iter(self._models.values())

    def resolve(self, name: str, service_tier: str | None = None) -> PricedModel | None:
        """The model a name means, or None when it is not in the catalog (unpriced); priced
        in ``service_tier`` when given (``PricedModel.serving``).

        Accepts ids and aliases in any case, provider prefixes (``openai/gpt-4o``), Bedrock ids
        (``us.anthropic.claude-sonnet-4-20250514-v1:0``) and Vertex ids
        (``claude-sonnet-4@20250514``).
        """
        try:
            model = self._resolved[name]
        except KeyError:
            model = self._lookup(name.strip().lower())
            if len(self._resolved) >= _RESOLVE_CACHE_SIZE:
                self._resolved.clear()  # names come from requests: keep the memo bounded
            self._resolved[name] = model
        return model.serving(service_tier) if model is not None else None

    def _lookup(self, name: str) -> PricedModel | None:
        model = self._names.get(name)
        if model is not None:
            return model
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                return self._lookup(name[len(prefix) :])
        if (match := _BEDROCK.match(name)) is not None:
            return self._names.get(match["name"])
        if (match := _VERTEX.match(name)) is not None:
            return self._names.get(f"{match['name']}-{match['date']}") or self._names.get(
                match["name"]
            )
        return None

    def merged(self, overrides: OverrideFile) -> Catalog:
        """A new catalog with an override file applied: new models added, known ones re-priced."""
        entries = {model.id: model.entry for model in self}
        for override in overrides.models:
            known = self._names.get(override.id.lower())
            if known is None:
                entries[override.id] = _new_entry(override.model_dump(exclude_unset=True))
                continue
            # Only what the override spells out replaces the shipped entry's fields.
            changes = override.model_dump(exclude_unset=True, exclude={"id"})
            entries[known.id] = _new_entry({**known.entry.model_dump(), **changes})
        return Catalog(entries.values())


def _new_entry(fields: dict[str, object]) -> ModelEntry:
    fields.setdefault("source", "pricing override file")
    fields.setdefault("checked", dt.date.today())
    try:
        return ModelEntry.model_validate(fields)
    except ValidationError as error:
        raise PricingFileError(
            f"override for model {fields.get('id')!r} is incomplete or invalid: {error}"
        ) from error


def _read_json(text: str, origin: str, schema: type[_File]) -> _File:
    try:
        return schema.model_validate(json.loads(text))
    except (ValueError, ValidationError) as error:
        raise PricingFileError(f"{origin} is not a valid pricing file: {error}") from error


def shipped_catalog() -> Catalog:
    """The catalog shipped inside this package, without overrides."""
    return _shipped_catalog()


@cache
def _shipped_catalog() -> Catalog:
    text = files("nullspend.pricing").joinpath("catalog.json").read_text(encoding="utf-8")
    return Catalog(_read_json(text, "the shipped catalog", CatalogFile).models)


def load_catalog(overrides: Path | None = None) -> Catalog:
    """The shipped catalog with an optional override file applied."""
    catalog = shipped_catalog()
    if overrides is None:
        return catalog
    try:
        text = overrides.read_text(encoding="utf-8")
    except OSError as error:
        raise PricingFileError(f"cannot read pricing file {overrides}: {error}") from error
    return catalog.merged(_read_json(text, str(overrides), OverrideFile))


@cache
def default_catalog() -> Catalog:
    """The shipped catalog plus the override file named by ``NULLSPEND_PRICING_FILE``.

    Read once per process (it is on every request's path); ``default_catalog.cache_clear()``
    makes the next call read the settings again.
    """
    return load_catalog(CoreSettings().pricing_file)


def recorded_provider(provider: str | None, model: str | None) -> str:
    """The provider a cost event records: the one given, else the one the catalog serves
    ``model`` by (a settle that named only its model was recorded as "unknown", missed by a
    provider filter), else "unknown"."""
    if provider:
        return provider
    priced = default_catalog().resolve(model) if model else None
    return priced.provider if priced else "unknown"


__all__ = [
    "Catalog",
    "PricedModel",
    "Prices",
    "default_catalog",
    "load_catalog",
    "recorded_provider",
    "shipped_catalog",
]
