"""Reading provider JSON: strict about the type of every count, lenient about absent fields."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from nullspend.wire.base import NO_READING, JSONObject, Reading, WireFormat

_EMPTY: JSONObject = {}


def count(obj: JSONObject, key: str, where: str) -> int:
    """A token or request count; absent and null read as 0 (providers omit zero counts)."""
    value = obj.get(key)
    if value is None:
        return 0
    # bool is an int subclass and floats are not counts: both mean the body is not what we think.
    if type(value) is not int or value < 0:
        raise ValueError(f"{where}.{key} must be a non-negative integer, got {value!r}")
    return value


def section(obj: JSONObject, key: str, where: str) -> JSONObject:
    """A nested object; absent and null read as empty so optional details cost no special case."""
    value = obj.get(key)
    if value is None:
        return _EMPTY
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}.{key} must be an object, got {type(value).__name__}")
    return value


def items(obj: JSONObject, key: str, where: str) -> list[Any]:
    """A nested list; absent and null read as empty."""
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{where}.{key} must be a list, got {type(value).__name__}")
    return value


def text(obj: JSONObject, key: str) -> str | None:
    """A string field such as a model name; anything else reads as absent (it is only a label)."""
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def request_int(obj: JSONObject, key: str) -> int | None:
    """An integer request parameter; a malformed one reads as unset (the provider rejects it)."""
    value = obj.get(key)
    return value if type(value) is int and value >= 0 else None


def parse_object(data: str | bytes) -> JSONObject:
    """A JSON object (an SSE payload, a body); raises ValueError for anything else, which
    callers skip."""
    try:
        value = json.loads(data)
    except RecursionError as exc:  # absurdly nested input is as unreadable as malformed input
        raise ValueError("JSON nested too deeply") from exc
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def reading_of_body(wire: WireFormat, content: bytes) -> Reading:
    """What a non-streamed answer's body says it cost; NO_READING for one that is no JSON object
    (an error page, a body nested past the parser's depth)."""
    try:
        return wire.read_response(parse_object(content))
    except ValueError:
        return NO_READING
