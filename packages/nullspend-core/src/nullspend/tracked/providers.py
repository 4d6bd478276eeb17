"""The provider SDK clients (openai, anthropic), built on the metered transports.

A NullSpend refusal must reach the caller as its own typed error: the SDKs wrap any exception
from their HTTP client into a connection error (and retry it), except their own error class, so
the refusal is raised as a subclass of both."""

from __future__ import annotations

import functools
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from nullspend.errors import ApiError
from nullspend.tracked.metering import (
    ANTHROPIC_ROUTES,
    OPENAI_ROUTES,
    Routes,
    unmetered_route_error,
)
from nullspend.tracked.transport import AsyncTrackedTransport, RaiseAs, TrackedTransport

if TYPE_CHECKING:
    import anthropic
    import openai

    from nullspend.client.aio import AsyncNullSpend
    from nullspend.client.sync import NullSpend


C = TypeVar("C")

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


# The openai SDK's WebSocket modes open a connection of their own (the websockets package), past
# the metered transport: a realtime session or a Responses socket would spend uncapped.
_OPENAI_SOCKETS = (("responses",), ("realtime",), ("beta", "realtime"), ("beta", "responses"))


def _sockets_refused(client: C, allow_unmetered: bool) -> C:
    if allow_unmetered:
        return client
    for names in _OPENAI_SOCKETS:
        resource: Any = client
        for name in names:
            resource = getattr(resource, name, None)
        if resource is not None and hasattr(resource, "connect"):
            path = "/v1/" + names[-1]
            resource.connect = functools.partial(_refuse_socket, path)
    return client


def _refuse_socket(path: str, *args: Any, **kwargs: Any) -> Any:
    raise _as_openai_error(unmetered_route_error(f"a WebSocket to {path}", path))


def _metered_http(
    ns: NullSpend, http: ModuleType, routes: Routes, raise_as: RaiseAs, allow_unmetered: bool
) -> Any:
    """An HTTP client of ``http``'s (httpx, or httpx2) whose transport meters ``routes``."""
    inner = http.HTTPTransport()
    transport = TrackedTransport(ns, inner, routes, raise_as, http, allow_unmetered=allow_unmetered)
    return http.Client(transport=transport)


def _async_metered_http(
    ns: AsyncNullSpend, http: ModuleType, routes: Routes, raise_as: RaiseAs, allow_unmetered: bool
) -> Any:
    """``_metered_http``, for the async SDK clients."""
    inner = http.AsyncHTTPTransport()
    transport = AsyncTrackedTransport(
        ns, inner, routes, raise_as, http, allow_unmetered=allow_unmetered
    )
    return http.AsyncClient(transport=transport)


def openai_client(ns: NullSpend, allow_unmetered: bool, **kwargs: Any) -> openai.OpenAI:
    import openai

    http_client = _metered_http(ns, httpx, OPENAI_ROUTES, _as_openai_error, allow_unmetered)
    client = openai.OpenAI(http_client=http_client, **kwargs)
    return _sockets_refused(client, allow_unmetered)


def async_openai_client(
    ns: AsyncNullSpend, allow_unmetered: bool, **kwargs: Any
) -> openai.AsyncOpenAI:
    import openai

    http_client = _async_metered_http(ns, httpx, OPENAI_ROUTES, _as_openai_error, allow_unmetered)
    client = openai.AsyncOpenAI(http_client=http_client, **kwargs)
    return _sockets_refused(client, allow_unmetered)


def anthropic_client(ns: NullSpend, allow_unmetered: bool, **kwargs: Any) -> anthropic.Anthropic:
    import anthropic

    http = _anthropic_http()
    http_client = _metered_http(ns, http, ANTHROPIC_ROUTES, _as_anthropic_error, allow_unmetered)
    return anthropic.Anthropic(http_client=http_client, **kwargs)


def async_anthropic_client(
    ns: AsyncNullSpend, allow_unmetered: bool, **kwargs: Any
) -> anthropic.AsyncAnthropic:
    import anthropic

    http = _anthropic_http()
    http_client = _async_metered_http(
        ns, http, ANTHROPIC_ROUTES, _as_anthropic_error, allow_unmetered
    )
    return anthropic.AsyncAnthropic(http_client=http_client, **kwargs)
