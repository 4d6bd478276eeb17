"""Options and helpers shared by the core commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nullspend.errors import NullSpendError
from nullspend.pricing import Catalog, default_catalog, load_catalog

PricingFileOption = Annotated[
    Path | None,
    typer.Option("--pricing-file", help="Pricing overrides (default: NULLSPEND_PRICING_FILE)."),
]


def fail(message: object) -> typer.Exit:
    """Print a clear error, no traceback, and give the exit to raise (status 2: bad input)."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def catalog_for(pricing_file: Path | None) -> Catalog:
    try:
        return load_catalog(pricing_file) if pricing_file else default_catalog()
    except NullSpendError as error:
        raise fail(error) from None
