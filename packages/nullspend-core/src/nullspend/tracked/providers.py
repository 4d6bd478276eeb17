"""The provider SDK clients (openai, anthropic), built on the metered transports.

A NullSpend refusal must reach the caller as its own typed error: the SDKs wrap any exception
from their HTTP client into a connection error (and retry it), except their own error class, so
the refusal is raised as a subclass of both."""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

from nullspend.errors import ApiError
from nullspend.tracked.metering import ANTHROPIC_ROUTES, OPENAI_ROUTES
from nullspend.tracked.transport import AsyncTrackedTransport, TrackedTransport

if TYPE_CHECKING:
    import anthropic
    import openai

    from nullspend.client.aio import AsyncNullSpend
    from nullspend.client.sync import NullSpend


_flavours: dict[tuple[type[ApiError], type[Exception]], type[ApiError]] = {}


def _flavoured(error: ApiError, sdk_error: type[Exception]) -> Exception:
    """``error`` as its own type and the SDK's base error at once."""
    kind = type(error)
    flavour = _flavours.get((kind, sdk_error))
    if flavour is None:
        flavour = _flavours[kind, sdk_error] = type(kind.__name__, (kind, sdk_error), {})
    return flavour(
        error.message,
        code=error.code,
        status=error.status,
        details=error.details,
        retry_after=error.retry_after,
        upgrade_url=error.upgrade_url,
    )


def _as_openai_error(error: ApiError) -> Exception:
    import openai

    return _flavoured(error, openai.OpenAIError)


def _as_anthropic_error(error: ApiError) -> Exception:
    import anthropic

    return _flavoured(error, anthropic.AnthropicError)


def _anthropic_http() -> ModuleType:
    """The HTTP library this anthropic SDK is built on: httpx2 from 2.x, httpx before."""
    import anthropic._base_client as base

    http = getattr(base, "httpx2", None)
    return http if isinstance(http, ModuleType) else httpx


def openai_client(ns: NullSpend, allow_unmetered: bool, **kwargs: Any) -> openai.OpenAI:
    import openai

    transport = TrackedTransport(
        ns,
        httpx.HTTPTransport(),
        OPENAI_ROUTES,
        _as_openai_error,
        allow_unmetered=allow_unmetered,
    )
    return openai.OpenAI(http_client=httpx.Client(transport=transport), **kwargs)


def async_openai_client(
    ns: AsyncNullSpend, allow_unmetered: bool, **kwargs: Any
) -> openai.AsyncOpenAI:
    import openai

    transport = AsyncTrackedTransport(
        ns,
        httpx.AsyncHTTPTransport(),
        OPENAI_ROUTES,
        _as_openai_error,
        allow_unmetered=allow_unmetered,
    )
    return openai.AsyncOpenAI(http_client=httpx.AsyncClient(transport=transport), **kwargs)


def anthropic_client(ns: NullSpend, allow_unmetered: bool, **kwargs: Any) -> anthropic.Anthropic:
    import anthropic

    http = _anthropic_http()
    transport = TrackedTransport(
        ns,
        http.HTTPTransport(),
        ANTHROPIC_ROUTES,
        _as_anthropic_error,
        http,
        allow_unmetered=allow_unmetered,
    )
    return anthropic.Anthropic(http_client=http.Client(transport=transport), **kwargs)


def async_anthropic_client(
    ns: AsyncNullSpend, allow_unmetered: bool, **kwargs: Any
) -> anthropic.AsyncAnthropic:
    import anthropic

    http = _anthropic_http()
    transport = AsyncTrackedTransport(
        ns,
        http.AsyncHTTPTransport(),
        ANTHROPIC_ROUTES,
        _as_anthropic_error,
        http,
        allow_unmetered=allow_unmetered,
    )
    return anthropic.AsyncAnthropic(http_client=http.AsyncClient(transport=transport), **kwargs)
