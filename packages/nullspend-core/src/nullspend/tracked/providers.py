"""The provider SDK clients, built on the metered transports. A NullSpend refusal must reach
the caller as its own typed error: the SDKs wrap any exception from their HTTP client into a
connection error (and retry it), except their own error class, so the refusal is raised as a
subclass of both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from nullspend.errors import ApiError
from nullspend.tracked.transport import AsyncTrackedTransport, TrackedTransport

if TYPE_CHECKING:
    import openai

    from nullspend.client.aio import AsyncNullSpend
    from nullspend.client.sync import NullSpend


_openai_flavours: dict[type[ApiError], type[ApiError]] = {}


def _as_openai_error(error: ApiError) -> Exception:
    import openai

    kind = type(error)
    flavour = _openai_flavours.setdefault(kind, type(kind.__name__, (kind, openai.OpenAIError), {}))
    return flavour(
        error.message,
        code=error.code,
        status=error.status,
        details=error.details,
        retry_after=error.retry_after,
        upgrade_url=error.upgrade_url,
    )


def openai_client(ns: NullSpend, **kwargs: Any) -> openai.OpenAI:
    import openai

    transport = TrackedTransport(ns, httpx.HTTPTransport(), _as_openai_error)
    return openai.OpenAI(http_client=httpx.Client(transport=transport), **kwargs)


def async_openai_client(ns: AsyncNullSpend, **kwargs: Any) -> openai.AsyncOpenAI:
    import openai

    transport = AsyncTrackedTransport(ns, httpx.AsyncHTTPTransport(), _as_openai_error)
    return openai.AsyncOpenAI(http_client=httpx.AsyncClient(transport=transport), **kwargs)
