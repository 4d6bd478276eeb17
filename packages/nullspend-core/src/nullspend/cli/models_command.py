"""``nullspend models``: the pricing catalog as a table or as JSON."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nullspend.cli.options import PricingFileOption, catalog_for


def models(
    as_json: Annotated[bool, typer.Option("--json", help="Print the entries as JSON.")] = False,
    provider: Annotated[
        str | None, typer.Option("--provider", help="Only this provider's models.")
    ] = None,
    pricing_file: PricingFileOption = None,
) -> None:
    """List the models NullSpend can price, with their prices in $ per million tokens."""
    entries = [
        m.entry for m in catalog_for(pricing_file) if provider is None or m.provider == provider
    ]
    if as_json:
        typer.echo(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
        return
    table = Table(title=f"{len(entries)} models, $ per million tokens")
    for column in (
        "model",
        "provider",
        "input",
        "cache read",
        "write 5m",
        "write 1h",
        "output",
        "context",
        "max output",
        "long context",
        "service tiers",
    ):
        table.add_column(column, justify="left" if column in ("model", "provider") else "right")
    for e in entries:
        p = e.prices
        tiers = ", ".join(
            f">{t.above_prompt_tokens:,}: {t.prices.input}/{t.prices.output}" for t in e.tiers
        )
        served = ", ".join(
            f"{name}: {tier.prices.input}/{tier.prices.output}"
            for name, tier in e.service_tiers.items()
        )
        table.add_row(
            e.id,
            e.provider,
            p.input,
            p.cache_read or "-",
            p.cache_write_5m or "-",
            p.cache_write_1h or "-",
            p.output,
            _count(e.context_window),
            _count(e.max_output_tokens),
            tiers or "-",
            served or "-",
        )
    Console(width=240).print(table)


def _count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"
