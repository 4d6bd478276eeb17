"""An ASGI app served over real HTTP on a free loopback port, in a thread of the test process:
the fake upstream and the NullSpend server under test alike."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn

# How long a stopping server lets requests still running finish before it cancels them (a
# fake upstream told to hang never finishes). Without a bound, its thread outlives the test and
# is still running an event loop when the interpreter exits: a crash risk at exit.
GRACEFUL_SHUTDOWN_SECONDS = 1


@dataclass
class ThreadedServer:
    base_url: str
    _server: uvicorn.Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        if self._thread.is_alive():
            raise RuntimeError(f"the server at {self.base_url} did not stop")


def serve_in_thread(
    app: Any, *, log_level: str = "critical", lifespan: str = "auto"
) -> ThreadedServer:
    """Start serving ``app``; returns once it accepts connections."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan=lifespan,
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    return ThreadedServer(f"http://127.0.0.1:{port}", server, thread)
