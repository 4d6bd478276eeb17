"""``nullspend cost``: price a saved provider response (JSON body or SSE stream)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nullspend.cli.options import PricingFileOption, catalog_for, fail
from nullspend.pricing import Catalog, Cost, PricedModel, price_usage, reading_cost
from nullspend.wire import FORMATS, detect_format
from nullspend.wire.base import PricedPart, Reading, WireFormat


def cost(
    file: Annotated[
        str, typer.Argument(help="A saved response: a JSON body or an SSE stream; - for stdin.")
    ],
    format: Annotated[
        str | None,
        typer.Option("--format", help=f"Force the wire format: {', '.join(FORMATS)}."),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="The model, where the response names none.")
    ] = None,
    pricing_file: PricingFileOption = None,
) -> None:
    """Print the usage and exact cost of a provider response as JSON."""
    catalog = catalog_for(pricing_file)
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        wire = _choose_format(data, format)
        reading, streamed = _read(wire, data)
    except (OSError, ValueError) as error:
        raise fail(error) from None
    except RecursionError:  # JSON nested past the parser's depth: unreadable, not a crash
        raise fail("the response is JSON nested too deeply to read") from None
    reported = reading.model or model
    if reported is None:
        raise fail("the response names no model; pass --model")
    priced, total = reading_cost(reading, model, catalog)
    result: dict[str, Any] = {
        "format": wire.name,
        "provider": wire.provider,
        "streamed": streamed,
        "model": reported,
        "resolved_model": priced.id if priced else None,
        "service_tier": reading.service_tier,
        "usage": reading.usage.as_dict() if reading.usage else None,
    }
    if reading.usage is None:
        result["no_usage"] = True
        result["cost"] = None
    elif priced is None:
        result["cost"] = {"total_microdollars": None, "unpriced": True}
    else:
        result["cost"] = _cost_json(price_usage(reading.usage, priced))
        if reading.extra:  # passes billed besides the answer (Anthropic's compaction, advisor)
            result["cost"]["total_microdollars"] = total
            result["cost"]["unpriced"] = total is None  # a pass's model is not in the catalog
            result["cost"]["passes"] = [
                _pass_json(part, priced, catalog, reading.service_tier) for part in reading.extra
            ]
    typer.echo(json.dumps(result, indent=2))


def _pass_json(
    part: PricedPart, call: PricedModel, catalog: Catalog, service_tier: str | None
) -> dict[str, Any]:
    priced = call if part.model is None else catalog.resolve(part.model, service_tier)
    return {
        "model": priced.id if priced else part.model,
        "usage": part.usage.as_dict(),
        "cost": _cost_json(price_usage(part.usage, priced))
        if priced
        else {"total_microdollars": None, "unpriced": True},
    }


def _choose_format(data: bytes, name: str | None) -> WireFormat:
    if name is None:
        return detect_format(data)
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; use one of {', '.join(FORMATS)}") from None


def _read(wire: WireFormat, data: bytes) -> tuple[Reading, bool]:
    """A JSON document is a complete response; anything else is read as an SSE stream."""
    try:
        body = json.loads(data)
    except ValueError:
        stream = wire.stream()
        stream.feed(data)
        return stream.finish(), True
    if not isinstance(body, dict):
        raise ValueError("a response body must be a JSON object")
    return wire.read_response(body), False


def _cost_json(cost: Cost) -> dict[str, Any]:
    return {
        "total_microdollars": cost.total_microdollars,
        "unpriced": False,
        "long_context_tier_above": cost.tier_threshold,
        "breakdown": {
            line.component: {
                "quantity": line.quantity,
                "picodollars_per_unit": line.picodollars_per_unit,
                "microdollars": line.microdollars,
            }
            for line in cost.lines()
            if line.quantity
        },
    }
