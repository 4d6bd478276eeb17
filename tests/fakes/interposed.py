"""A NullSpend server seen through a man in the middle: every request is forwarded to the real
server, and a test's ``answer`` hook decides what the client hears (the real answer, a failure
instead, or the real answer later)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.upstream import serving

# What the client hears: given the request and the server's answer (already recorded there).
Answer = Callable[[Request, Response], Awaitable[Response]]


@contextmanager
def interposed(upstream: str, answer: Answer) -> Iterator[str]:
    """Serve the man in the middle; yields its base URL, for the client to use."""

    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient(base_url=upstream) as client:
            reply = await client.request(
                request.method,
                request.url.path,
                params=request.query_params,
                content=await request.body(),
                headers={k: v for k, v in request.headers.items() if k != "host"},
            )
        real = Response(reply.content, reply.status_code, media_type="application/json")
        return await answer(request, real)

    methods = ["GET", "POST", "DELETE", "PATCH", "PUT"]
    app = Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
    with serving(app) as base_url:
        yield base_url


@dataclass
class HeldSettles:
    """An ``answer`` hook that holds every settle's answer until ``may_go`` is set, and notes
    in ``order`` when each is answered: to show that a call did not wait for its settle."""

    order: list[str] = field(default_factory=list)
    may_go: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, request: Request, real: Response) -> Response:
        if request.url.path.endswith("/settle"):
            await asyncio.to_thread(self.may_go.wait, 10)
            self.order.append("settle answered")
        return real
