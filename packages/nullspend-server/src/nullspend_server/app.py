"""The ASGI application: routes, error format, and the process's background duties."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from nullspend.errors import ErrorCode
from nullspend_server.api import analytics, budgets, cost_events, keys, reservations
from nullspend_server.auth import KeyCache
from nullspend_server.db.database import Database
from nullspend_server.engine import Engine
from nullspend_server.errors import ErrorBody, error_response, install_error_handlers
from nullspend_server.proxy import routes as proxy_routes
from nullspend_server.proxy.upstream import upstream_session
from nullspend_server.rate_limit import RateLimiter
from nullspend_server.settings import ServerSettings

# Every API module with a `router`, in the order they are mounted.
API_MODULES = (keys, budgets, reservations, analytics, cost_events)


class NullSpendApp(FastAPI):
    """FastAPI for the API and the dashboard; the proxy's ``/v1`` paths go straight to the
    proxy app, ahead of the middleware stack and the router: on the hot path they cost more
    than the proxy's own work (benchmarks/README.md)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] == "http" and (path == "/v1" or path.startswith("/v1/")):
            scope["app"] = self
            await proxy_routes.proxy_app(scope, receive, send)
            return
        if scope["type"] == "http" and ("\x00" in path or b"%00" in scope["query_string"]):
            # Ids and filters in the URL are compared with stored text, which PostgreSQL
            # refuses to hold a NUL: an id with one names nothing, a filter with one is invalid.
            refused = (
                error_response(ErrorCode.NOT_FOUND, "nothing is at this path")
                if "\x00" in path
                else error_response(ErrorCode.VALIDATION_ERROR, "a query may not hold NUL")
            )
            await refused(scope, receive, send)
            return
        if scope["type"] == "http":
            # The API reads a body whole (FastAPI does, before any dependency checks the key):
            # held to the proxy's limit, so no client can make the server hold more.
            limit: int = self.state.settings.max_body_bytes
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > limit:
                too_large = f"request bodies are limited to {limit} bytes"
                await error_response(ErrorCode.PAYLOAD_TOO_LARGE, too_large)(scope, receive, send)
                return
            receive = _limited(receive, limit)
        await super().__call__(scope, receive, send)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's description, naming the key every API route takes: the routes read it
        themselves (nullspend_server.auth), so FastAPI cannot tell."""
        if self.openapi_schema is None:
            spec = super().openapi()
            spec["components"]["securitySchemes"] = {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-NullSpend-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            }
            spec["security"] = [{"apiKey": []}, {"bearer": []}]
        return super().openapi()


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that fails with a 413 once the body has passed ``limit`` bytes (a body sent
    without a length, in chunks)."""
    received = 0

    async def limited() -> Message:
        nonlocal received
        message = await receive()
        received += len(message.get("body", b""))
        if received > limit:
            # FastAPI answers an HTTPException raised while it reads a body as it is
            raise HTTPException(413, f"request bodies are limited to {limit} bytes")
        return message

    return limited


def create_app(settings: ServerSettings | None = None) -> NullSpendApp:
    """The server for ``settings`` (default: from the environment). The schema must be migrated."""
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.database_url)
        app.state.db = db
        app.state.key_cache = KeyCache(settings.key_cache_seconds)
        app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute)
        app.state.upstream = upstream_session(settings)
        engine = Engine(db, settings)
        app.state.engine = engine
        await engine.start()
        # Everything built so far (modules, the app, the catalog) lives as long as the
        # process: keep it out of the collector's full passes, which would otherwise walk it
        # all and pause a request for milliseconds now and then.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await engine.stop()
            await app.state.upstream.close()
            await db.dispose()

    app = NullSpendApp(title="NullSpend", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    # Every error is the one body (a refused request too: 400, not FastAPI's 422 {"detail"}).
    errors: dict[int | str, dict[str, Any]] = {
        "4XX": {"model": ErrorBody, "description": "The request was refused"}
    }
    for module in API_MODULES:
        app.include_router(module.router, responses=errors)
    return app
