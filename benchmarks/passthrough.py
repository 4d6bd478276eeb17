"""The floor: a bare pass-through proxy with no accounting at all, as plain ASGI.

    PASSTHROUGH_UPSTREAM=http://127.0.0.1:8931 python -m uvicorn --factory \
        benchmarks.passthrough:create_app --log-level warning --no-access-log

Forwards POST /v1/chat/completions to the upstream with one shared aiohttp session and returns
the upstream's status, content type and bytes (streams chunk by chunk, as they arrive). What any
Python proxy costs on the machine, before it authenticates, prices or records anything.
"""

from __future__ import annotations

import os

import aiohttp
from starlette.types import ASGIApp, Receive, Scope, Send

ROUTE = "/v1/chat/completions"


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send, holder: list[aiohttp.ClientSession]) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            holder.append(
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
                    cookie_jar=aiohttp.DummyCookieJar(),
                    skip_auto_headers=("User-Agent",),
                )
            )
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            for session in holder:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _forward(
    session: aiohttp.ClientSession, upstream: str, scope: Scope, receive: Receive, send: Send
) -> None:
    headers = {
        k.decode(): v.decode()
        for k, v in scope["headers"]
        if k in (b"authorization", b"content-type", b"accept")
    }
    body = await _read_body(receive)
    async with session.post(upstream + ROUTE, data=body, headers=headers) as response:
        content_type = response.headers.get("content-type", "application/json").encode()
        streamed = content_type.startswith(b"text/event-stream")
        start: dict[str, object] = {"type": "http.response.start", "status": response.status}
        if streamed:
            start["headers"] = [(b"content-type", content_type)]
            await send(start)
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        content = await response.read()
        start["headers"] = [
            (b"content-type", content_type),
            (b"content-length", str(len(content)).encode()),
        ]
        await send(start)
        await send({"type": "http.response.body", "body": content})


def create_app() -> ASGIApp:
    upstream = os.environ["PASSTHROUGH_UPSTREAM"].rstrip("/")
    holder: list[aiohttp.ClientSession] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send, holder)
        elif scope["method"] == "POST" and scope["path"] == ROUTE:
            await _forward(holder[0], upstream, scope, receive, send)
        else:
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"not found"})

    return app
