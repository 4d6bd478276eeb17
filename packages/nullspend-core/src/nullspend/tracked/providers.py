"""The provider SDK clients (openai, anthropic), built on the metered transports.

A NullSpend refusal must reach the caller as its own typed error: the SDKs wrap any exception
from their HTTP client into a connection error (and retry it), except their own error class, so
the refusal is raised as a subclass of both."""

from __future__ import annotations

import functools
from collections.abc import Callable
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


def _flavour(kind: type[ApiError], sdk_error: type[Exception]) -> type[ApiError]:
    """``kind`` and the SDK's base error at once: a class made at run time, which pickles as
    the two it is made of (in a worker process, say)."""
    flavour = _flavours.get((kind, sdk_error))
    if flavour is None:
        namespace = {"__reduce__": _reduce_flavoured}
        flavour = _flavours[kind, sdk_error] = type(kind.__name__, (kind, sdk_error), namespace)
    return flavour


def _reduce_flavoured(error: ApiError) -> tuple[Any, ...]:
    kind, sdk_error = type(error).__bases__
    return _unpickle_flavoured, (kind, sdk_error, error.args), error.__dict__


def _unpickle_flavoured(
    kind: type[ApiError], sdk_error: type[Exception], args: tuple[Any, ...]
) -> ApiError:
    return _flavour(kind, sdk_error)(*args)


def _flavoured(error: ApiError, sdk_error: type[Exception]) -> Exception:
    """``error`` as its own type and the SDK's base error at once."""
    return _flavour(type(error), sdk_error)(
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
    # A copy (with_options() makes one too) is a new client with resources of its own.
    copying: Any = client
    copying.copy = copying.with_options = functools.partial(_copy_refusing, copying.copy)
    return client


def _copy_refusing(copy: Callable[..., C], *args: Any, **kwargs: Any) -> C:
    return _sockets_refused(copy(*args, **kwargs), allow_unmetered=False)


def _refuse_socket(path: str, *args: Any, **kwargs: Any) -> Any:
    raise _as_openai_error(unmetered_route_error(f"a WebSocket to {path}", path))


def _on_metered_http(
    sdk_client: Callable[..., C],
    default_http: Callable[[], Any],
    transport: Callable[..., Any],
    ns: NullSpend | AsyncNullSpend,
    routes: Routes,
    raise_as: RaiseAs,
    http: ModuleType,
    allow_unmetered: bool,
    kwargs: dict[str, Any],
) -> C:
    """An SDK client on the SDK's own default HTTP client (its connection limits, redirects
    followed, socket options, the environment's proxies), each of whose transports (a proxy's,
    mounted for the URLs it carries, as well as the default one) meters ``routes``."""
    client = default_http()

    def meter(inner: Any) -> Any:
        return transport(ns, inner, routes, raise_as, http, allow_unmetered=allow_unmetered)

    client._transport = meter(client._transport)
    client._mounts = {
        pattern: None if mounted is None else meter(mounted)
        for pattern, mounted in client._mounts.items()
    }
    return sdk_client(http_client=client, **kwargs)


def openai_client(ns: NullSpend, allow_unmetered: bool, **kwargs: Any) -> openai.OpenAI:
    import openai

    client = _on_metered_http(
        openai.OpenAI,
        openai.DefaultHttpxClient,
        TrackedTransport,
        ns,
        OPENAI_ROUTES,
        _as_openai_error,
        httpx,
        allow_unmetered,
        kwargs,
    )
    return _sockets_refused(client, allow_unmetered)


def async_openai_client(
    ns: AsyncNullSpend, allow_unmetered: bool, **kwargs: Any
) -> openai.AsyncOpenAI:
    import openai

    client = _on_metered_http(
        openai.AsyncOpenAI,
        openai.DefaultAsyncHttpxClient,
        AsyncTrackedTransport,
        ns,
        OPENAI_ROUTES,
        _as_openai_error,
        httpx,
        allow_unmetered,
        kwargs,
    )
    return _sockets_refused(client, allow_unmetered)


def anthropic_client(ns: NullSpend, allow_unmetered: bool, **kwargs: Any) -> anthropic.Anthropic:
    import anthropic

    return _on_metered_http(
        anthropic.Anthropic,
        anthropic.DefaultHttpxClient,
        TrackedTransport,
        ns,
        ANTHROPIC_ROUTES,
        _as_anthropic_error,
        _anthropic_http(),
        allow_unmetered,
        kwargs,
    )


def async_anthropic_client(
    ns: AsyncNullSpend, allow_unmetered: bool, **kwargs: Any
) -> anthropic.AsyncAnthropic:
    import anthropic

    return _on_metered_http(
        anthropic.AsyncAnthropic,
        anthropic.DefaultAsyncHttpxClient,
        AsyncTrackedTransport,
        ns,
        ANTHROPIC_ROUTES,
        _as_anthropic_error,
        _anthropic_http(),
        allow_unmetered,
        kwargs,
    )
