"""What a proxied request says about itself in headers, and what is forwarded upstream."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from nullspend.attribution import customer_error, session_error, tag_errors
from nullspend.errors import ErrorCode
from nullspend_server.errors import ApiError
from nullspend_server.keys import KEY_PREFIX

TRACE_ID = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
# Connection-level headers, and ours, never go upstream; content-length is recomputed, and
# accept-encoding is replaced: usage is read from the bytes, so they must arrive uncompressed.
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "nullspend-version",
    }
)
NOT_RETURNED = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
    }
)


# The provider's credentials: forwarded as the client sent them.
PROVIDER_CREDENTIALS = ("Authorization", "x-api-key")


def nullspend_key(headers: Mapping[str, str]) -> str | None:
    """The NullSpend key a proxied request presents: X-NullSpend-Key alone. The provider's
    credential headers go to the provider, so a NullSpend key in one of them is refused rather
    than authenticated (or forwarded): the provider must never see it."""
    for name in PROVIDER_CREDENTIALS:
        if KEY_PREFIX in headers.get(name.lower(), ""):
            raise ApiError(
                ErrorCode.AUTHENTICATION_REQUIRED,
                f"a NullSpend key in {name} would be forwarded to the provider: send it in"
                f" X-NullSpend-Key, and the provider's key in {name}",
                {"header": name},
            )
    key = headers.get("x-nullspend-key")
    return None if key is None else key.strip()  # as the API reads it


@dataclass
class Attribution:
    tags: dict[str, str] = field(default_factory=dict)
    customer: str | None = None
    session_id: str | None = None
    trace_id: str = ""
    upstream: str | None = None
    warnings: list[str] = field(default_factory=list)


def read_attribution(headers: Mapping[str, str]) -> Attribution:
    """Tags, customer, session, trace and upstream choice; an invalid value is ignored with a
    warning (returned in X-NullSpend-Warning) rather than failing the call."""
    found = Attribution(upstream=headers.get("x-nullspend-upstream"))
    if (raw := headers.get("x-nullspend-tags")) is not None:
        try:
            tags = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
            tags = None
        errors = tag_errors(tags) if tags is not None else ["X-NullSpend-Tags is not JSON"]
        if errors:
            found.warnings.append("tags ignored: " + "; ".join(errors))
        else:
            found.tags = tags
    if (customer := headers.get("x-nullspend-customer")) is not None:
        if error := customer_error(customer):
            found.warnings.append(f"customer ignored: {error}")
        else:
            found.customer = customer
    if (session := headers.get("x-nullspend-session")) is not None:
        if error := session_error(session):
            found.warnings.append(f"session ignored: {error}")
        else:
            found.session_id = session
    trace = headers.get("x-nullspend-trace-id", "").lower()
    if trace and not TRACE_ID.fullmatch(trace):
        found.warnings.append("trace id ignored: expected 32 hex characters")
        trace = ""
    if not trace and (parent := TRACEPARENT.fullmatch(headers.get("traceparent", "").lower())):
        trace = parent.group(1)
    found.trace_id = trace or secrets.token_hex(16)
    return found


def upstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones and ours; credentials pass through."""
    forwarded = {
        name: value
        for name, value in headers.items()
        if name.lower() not in NOT_FORWARDED and not name.lower().startswith("x-nullspend-")
    }
    forwarded["accept-encoding"] = "identity"
    return forwarded
