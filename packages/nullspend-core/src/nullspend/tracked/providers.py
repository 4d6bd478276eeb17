"""The provider SDK clients (openai, anthropic), built on the metered transports.

A NullSpend refusal must reach the caller as its own typed error: the SDKs wrap any exception
from their HTTP client into a connection error (and retry it), except their own error class, so
the refusal is raised as a subclass of both."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

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


def as_openai_error(error: ApiError) -> Exception:
    import openai

    return _flavoured(error, openai.OpenAIError)


def as_anthropic_error(error: ApiError) -> Exception:
    import anthropic

    return _flavoured(error, anthropic.AnthropicError)


# The openai SDK's WebSocket modes open a connection of their own (the websockets package), past
# the metered transport: a realtime session or a Responses socket would spend uncapped.
_OPENAI_SOCKETS = (("responses",), ("realtime",), ("beta", "realtime"), ("beta", "responses"))


def _refuse_sockets(client: Any) -> None:
    for names in _OPENAI_SOCKETS:
        resource: Any = client
        for name in names:
            resource = getattr(resource, name, None)
        if resource is not None and hasattr(resource, "connect"):
            path = "/v1/" + names[-1]
            resource.connect = functools.partial(_refuse_socket, path)


def _refuse_socket(path: str, *args: Any, **kwargs: Any) -> Any:
    raise as_openai_error(unmetered_route_error(f"a WebSocket to {path}", path))


def _http_library(http_client: Any) -> ModuleType:
    """The HTTP library ``http_client`` is built on (httpx, or its fork httpx2, which newer
    anthropic SDKs use and openai accepts): its transports must yield that library's streams."""
    for cls in type(http_client).__mro__:
        library = sys.modules.get(cls.__module__.partition(".")[0])
        if library is not None and library.__name__ in ("httpx", "httpx2"):
            return library
    raise TypeError(f"http_client must be an httpx (or httpx2) client, not {type(http_client)}")


@dataclass(frozen=True)
class _Tracking:
    """How one tracked SDK client is built, and its copies (``copy()``, ``with_options()``):
    on an HTTP client (the SDK's default one, or the caller's own ``http_client``) each of
    whose transports meters ``routes``."""

    sdk_client: Callable[..., Any]
    default_http: Callable[[], Any]
    transport: type[TrackedTransport] | type[AsyncTrackedTransport]
    ns: NullSpend | AsyncNullSpend
    routes: Routes
    raise_as: RaiseAs
    allow_unmetered: bool
    opens_sockets: bool = False

    def build(self, kwargs: dict[str, Any]) -> Any:
        http_client = self._metered(kwargs.pop("http_client", None))
        return self._tracked(self.sdk_client(http_client=http_client, **kwargs))

    def _metered(self, http_client: Any) -> Any:
        """``http_client`` (else the SDK's default: its connection limits, redirects followed,
        socket options, the environment's proxies) with its transports metered in place: the
        default one and each proxy's, mounted for the URLs it carries."""
        if http_client is None:
            http_client = self.default_http()
        http = _http_library(http_client)
        asynchronous = issubclass(self.transport, AsyncTrackedTransport)
        if not isinstance(http_client, http.AsyncClient if asynchronous else http.Client):
            kind = "an async" if asynchronous else "a sync"
            raise TypeError(f"this tracked client needs {kind} http_client: {type(http_client)}")
        if isinstance(http_client._transport, TrackedTransport | AsyncTrackedTransport):
            # Its calls would be reserved by each tracked client it serves, one in another.
            raise ValueError(
                "this http_client is metered already: give each tracked client its own"
            )

        def meter(inner: Any) -> Any:
            return self.transport(
                self.ns,  # type: ignore[arg-type]
                inner,
                self.routes,
                self.raise_as,
                http,
                allow_unmetered=self.allow_unmetered,
            )

        http_client._transport = meter(http_client._transport)
        http_client._mounts = {
            pattern: None if mounted is None else meter(mounted)
            for pattern, mounted in http_client._mounts.items()
        }
        return http_client

    def _tracked(self, client: Any) -> Any:
        if self.opens_sockets and not self.allow_unmetered:
            _refuse_sockets(client)
        # A copy is a new SDK client, with resources of its own and perhaps an HTTP client.
        client.copy = client.with_options = functools.partial(self._copy, client.copy)
        return client

    def _copy(self, copy: Callable[..., Any], *, http_client: Any = None, **kwargs: Any) -> Any:
        if http_client is not None:
            http_client = self._metered(http_client)
        return self._tracked(copy(http_client=http_client, **kwargs))


def openai_client(ns: NullSpend, allow_unmetered: bool, **kwargs: Any) -> openai.OpenAI:
    import openai

    tracking = _Tracking(
        openai.OpenAI,
        openai.DefaultHttpxClient,
        TrackedTransport,
        ns,
        OPENAI_ROUTES,
        as_openai_error,
        allow_unmetered,
        opens_sockets=True,
    )
    return tracking.build(kwargs)  # type: ignore[no-any-return]


def async_openai_client(
    ns: AsyncNullSpend, allow_unmetered: bool, **kwargs: Any
) -> openai.AsyncOpenAI:
    import openai

    tracking = _Tracking(
        openai.AsyncOpenAI,
        openai.DefaultAsyncHttpxClient,
        AsyncTrackedTransport,
        ns,
        OPENAI_ROUTES,
        as_openai_error,
        allow_unmetered,
        opens_sockets=True,
    )
    return tracking.build(kwargs)  # type: ignore[no-any-return]


def anthropic_client(ns: NullSpend, allow_unmetered: bool, **kwargs: Any) -> anthropic.Anthropic:
    import anthropic

    tracking = _Tracking(
        anthropic.Anthropic,
        anthropic.DefaultHttpxClient,
        TrackedTransport,
        ns,
        ANTHROPIC_ROUTES,
        as_anthropic_error,
        allow_unmetered,
    )
    return tracking.build(kwargs)  # type: ignore[no-any-return]


def async_anthropic_client(
    ns: AsyncNullSpend, allow_unmetered: bool, **kwargs: Any
) -> anthropic.AsyncAnthropic:
    import anthropic

    tracking = _Tracking(
        anthropic.AsyncAnthropic,
        anthropic.DefaultAsyncHttpxClient,
        AsyncTrackedTransport,
        ns,
        ANTHROPIC_ROUTES,
        as_anthropic_error,
        allow_unmetered,
    )
    return tracking.build(kwargs)  # type: ignore[no-any-return]
