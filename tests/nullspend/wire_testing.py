"""Helpers shared by the wire format tests: fixtures, feeding streams, checking SDK models."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from nullspend.wire import Reading, WireFormat

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(fixture(name))
    return body


def read_stream(fmt: WireFormat, data: bytes, cuts: list[int] | None = None) -> Reading:
    """Feed ``data`` split at the given offsets (whole when None) and finish."""
    acc = fmt.stream()
    bounds = [0, *sorted(cuts or []), len(data)]
    for start, end in pairwise(bounds):
        acc.feed(data[start:end])
    return acc.finish()


def read_bytewise(fmt: WireFormat, data: bytes) -> Reading:
    """Feed one byte at a time: every \\r\\n and every multi-byte character is split."""
    acc = fmt.stream()
    for i in range(len(data)):
        acc.feed(data[i : i + 1])
    return acc.finish()


def sse(*events: tuple[str | None, Any]) -> bytes:
    """An SSE stream of (event name or None, payload); payloads that are not str are JSON."""
    out = []
    for name, payload in events:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        out.append((f"event: {name}\n" if name else "") + f"data: {data}\n\n")
    return "".join(out).encode()


def sse_payloads(data: bytes) -> list[tuple[str | None, str]]:
    """The (event name, data) pairs of a fixture stream, split the simple way for SDK checks."""
    events = []
    for block in data.decode().replace("\r\n", "\n").split("\n\n"):
        if block.strip():
            lines = block.split("\n")
            name = next((line[7:] for line in lines if line.startswith("event: ")), None)
            payload = "\n".join(line[6:] for line in lines if line.startswith("data: "))
            events.append((name, payload))
    return events


def unknown_fields(model: Any, path: str = "$") -> list[str]:
    """Fields the SDK model does not declare: SDK models accept extras, so typos would pass."""
    found: list[str] = []
    if isinstance(model, BaseModel):
        found += [f"{path}.{key}" for key in model.__pydantic_extra__ or {}]
        for key in type(model).model_fields:
            found += unknown_fields(getattr(model, key), f"{path}.{key}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            found += unknown_fields(item, f"{path}[{i}]")
    elif isinstance(model, dict):
        for key, value in model.items():
            found += unknown_fields(value, f"{path}.{key}")
    return found


def spy_json_loads(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record every JSON payload parsed from now on: shows which events an accumulator bothers
    to parse."""
    parsed: list[Any] = []
    real_loads = json.loads

    def recording_loads(data: str) -> Any:
        value = real_loads(data)
        parsed.append(value)
        return value

    monkeypatch.setattr(json, "loads", recording_loads)
    return parsed
