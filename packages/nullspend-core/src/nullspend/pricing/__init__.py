"""Prices: the shipped catalog, overrides, exact costs and pre-request estimates."""

from nullspend.pricing.catalog import (
    Catalog,
    PricedModel,
    Prices,
    default_catalog,
    load_catalog,
    recorded_provider,
    shipped_catalog,
)
from nullspend.pricing.cost import (
    Cost,
    CostLine,
    cost,
    parts_picodollars,
    price_usage,
    reading_cost,
    total_picodollars,
    unrecordable,
)
from nullspend.pricing.estimate import (
    Estimate,
    estimate_call,
    estimate_request,
    estimate_request_body,
)

__all__ = [
    "Catalog",
    "Cost",
    "CostLine",
    "Estimate",
    "PricedModel",
    "Prices",
    "cost",
    "default_catalog",
    "estimate_call",
    "estimate_request",
    "estimate_request_body",
    "load_catalog",
    "parts_picodollars",
    "price_usage",
    "reading_cost",
    "recorded_provider",
    "shipped_catalog",
    "total_picodollars",
    "unrecordable",
]
