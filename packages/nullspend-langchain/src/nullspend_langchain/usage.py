"""LangChain's ``usage_metadata`` as NullSpend's ``Reading``: its ``Usage`` and service tier.

LangChain counts input in total (cache reads and writes and audio included) and output in total
(reasoning included), with the parts in ``input_token_details`` and ``output_token_details``;
``Usage`` keeps the parts apart, each priced at its own rate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nullspend.usage import Usage
from nullspend.wire import Reading

# The processing tiers langchain-openai reports apart (OpenAI's service_tier in the answer):
# the tier's tokens under its name, their parts under its prefix ("priority_cache_read").
_SERVICE_TIERS = ("priority", "flex")


def reading_from_metadata(
    metadata: Mapping[str, Any],
    model: str | None = None,
    *,
    cache_ttl: str | None = None,
    web_searches: int = 0,
) -> Reading:
    """``cache_ttl`` ("5m" or "1h", what the call asked for) prices cache writes reported
    without their split by lifetime: langchain-anthropic builds a stream's usage from its last
    event, which has no split. ``web_searches`` are the server-side searches the answer ran."""
    tier = _service_tier_of(metadata)
    return Reading(_usage_of(metadata, cache_ttl, web_searches, tier), model, tier)


def _service_tier_of(metadata: Mapping[str, Any]) -> str | None:
    """The processing tier the usage was served in, when it is priced apart, else None."""
    details: Mapping[str, Any] | None = metadata.get("input_token_details")
    if details:
        for tier in _SERVICE_TIERS:
            if tier in details:
                return tier
    return None


def _usage_of(
    metadata: Mapping[str, Any],
    cache_ttl: str | None,
    web_searches: int,
    service_tier: str | None,
) -> Usage:
    """The usage, its parts named after ``service_tier`` when it has one."""
    total_in = int(metadata.get("input_tokens") or 0)
    total_out = int(metadata.get("output_tokens") or 0)
    details_in: Mapping[str, Any] | None = metadata.get("input_token_details")
    details_out: Mapping[str, Any] | None = metadata.get("output_token_details")
    if not (details_in and any(details_in.values())) and not (
        details_out and any(details_out.values())
    ):
        # Most calls: no part of either total is priced apart (none given, or all zeros).
        return Usage(
            input_tokens=total_in, output_tokens=total_out, web_search_requests=web_searches
        )
    details_in = details_in or {}
    details_out = details_out or {}
    prefix = f"{service_tier}_" if service_tier else ""
    cache_read = int(details_in.get(f"{prefix}cache_read") or 0)
    write_1h = int(details_in.get("ephemeral_1h_input_tokens") or 0)
    cache_creation = int(details_in.get(f"{prefix}cache_creation") or 0)
    write_5m = max(cache_creation - write_1h, int(details_in.get("ephemeral_5m_input_tokens") or 0))
    if cache_ttl == "1h" and "ephemeral_1h_input_tokens" not in details_in:
        # Written without its split: at the lifetime asked for (the higher price when a call
        # asked for both, an upper bound).
        write_5m, write_1h = 0, cache_creation
    audio_in = int(details_in.get("audio") or 0)
    audio_out = int(details_out.get("audio") or 0)
    output = max(total_out - audio_out, 0)
    return Usage(
        input_tokens=max(total_in - cache_read - write_5m - write_1h - audio_in, 0),
        cache_read_tokens=cache_read,
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        output_tokens=output,
        # Within the output, as the wire formats read it: some OpenAI-compatible servers count
        # reasoning apart, and a part larger than its whole is no usage at all.
        reasoning_tokens=min(int(details_out.get(f"{prefix}reasoning") or 0), output),
        audio_input_tokens=audio_in,
        audio_output_tokens=audio_out,
        web_search_requests=web_searches,
    )
