"""A real server over real HTTP for every test, on SQLite and (when NULLSPEND_TEST_DATABASE_URL
names a PostgreSQL database, as .ci/run does) on PostgreSQL.

Each test gets a fresh database: a copy of a migrated SQLite file, or a PostgreSQL database
cloned from a migrated template (CREATE DATABASE ... TEMPLATE is much faster than migrating).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from nullspend_server.accounts import bootstrap
from nullspend_server.app import create_app
from nullspend_server.db.database import Database
from nullspend_server.db.migrate import migrate
from nullspend_server.settings import ServerSettings
from tests.fakes.threaded import ThreadedServer, serve_in_thread

# The server runs in a thread of the test process, and its aiosqlite connections hop threads on
# every query: with the default 5 ms GIL switch interval those hops queue behind the client's
# event loop (200 concurrent requests: 16 s here against 1.1 s with the server in its own
# process). A short interval restores realistic interleaving; benchmarks use separate processes.
sys.setswitchinterval(0.0002)

PG_URL = os.environ.get("NULLSPEND_TEST_DATABASE_URL")
DIALECTS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(PG_URL is None, reason="NULLSPEND_TEST_DATABASE_URL is not set"),
    ),
]


def _pg_admin(url: str) -> str:
    """A libpq URL for the server's maintenance database (to create and drop databases)."""
    parsed = make_url(url).set(drivername="postgresql", database="postgres")
    return parsed.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "nullspend.db"
    migrate(f"sqlite:///{path}")
    return path


@contextlib.contextmanager
def _template_held() -> Iterator[None]:
    """The PostgreSQL template to one test process at a time (pytest-xdist's workers): two
    migrating a new database at once collide, and a clone fails while another connects."""
    assert PG_URL is not None
    with psycopg.connect(_pg_admin(PG_URL), autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(hashtext('nullspend test template'))")
        yield


@pytest.fixture(scope="session")
def pg_template() -> str:
    assert PG_URL is not None
    with _template_held():
        migrate(PG_URL)
    return make_url(PG_URL).database or ""


def fresh_database(dialect: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if dialect == "sqlite":
        path = tmp_path / "nullspend.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    assert PG_URL is not None
    template = request.getfixturevalue("pg_template")
    name = f"nullspend_t_{secrets.token_hex(6)}"
    with _template_held(), psycopg.connect(_pg_admin(PG_URL), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(_pg_admin(PG_URL), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=DIALECTS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from fresh_database(request.param, tmp_path, request)


async def _bootstrap(url: str) -> str:
    db = Database(url)
    try:
        async with db.sessions() as session:
            key = await bootstrap(session)
    finally:
        await db.dispose()
    assert key is not None
    return key


@dataclass
class RunningServer:
    base_url: str
    database_url: str
    admin_key: str
    settings: ServerSettings
    _served: ThreadedServer = field(repr=False)

    def client(self, key: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"X-NullSpend-Key": key or self.admin_key}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    def async_client(self, key: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"X-NullSpend-Key": key or self.admin_key}
        return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=60, **kwargs)

    def new_key(self, role: str = "member", **body: Any) -> str:
        """A new key of this organization, created through the API."""
        with self.client() as client:
            response = client.post("/api/keys", json={"name": f"{role}-key", "role": role, **body})
            assert response.status_code == 201, response.text
            key: str = response.json()["data"]["key"]
            return key

    def stop(self) -> None:
        self._served.stop()


def start_server(database_url: str, admin_key: str | None = None, **settings: Any) -> RunningServer:
    """Serve ``database_url`` (already migrated) on a free loopback port, in a thread; an empty
    database is bootstrapped first unless the admin key of an existing one is given."""
    admin_key = admin_key or asyncio.run(_bootstrap(database_url))
    config = ServerSettings(database_url=database_url, **settings)
    served = serve_in_thread(create_app(config), log_level="warning", lifespan="on")
    return RunningServer(served.base_url, database_url, admin_key, config, served)


@pytest.fixture
def small_pool_server(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningServer]:
    """A server whose PostgreSQL pool has two connections and gives up waiting for one after
    5 s: what a request holding more than one at a time does to a busy server, shown fast."""
    from nullspend_server.db import database, engine

    monkeypatch.setattr(
        database,
        "create_engine_async",
        functools.partial(engine.create_engine_async, pool_size=1, pool_timeout=5),
    )
    running = start_server(database_url)
    yield running
    running.stop()


@pytest.fixture
def server(database_url: str) -> Iterator[RunningServer]:
    running = start_server(database_url, key_cache_seconds=0.2)
    yield running
    running.stop()


@pytest.fixture
def admin(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def spawn_server(database_url: str, **settings: str) -> tuple[subprocess.Popen[bytes], str]:
    """A server in its own OS process (uvicorn), as a deployment runs it; the schema must be
    migrated. Returns the process and its base URL once it answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "NULLSPEND_DATABASE_URL": database_url,
        **{f"NULLSPEND_{k.upper()}": v for k, v in settings.items()},
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "nullspend_server.app:create_app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{base_url}/openapi.json", timeout=1)
            return process, base_url
        except httpx.TransportError:
            assert process.poll() is None, "the server process exited"
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the server process did not start")


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if PG_URL is None:
        pytest.skip("NULLSPEND_TEST_DATABASE_URL is not set")
    yield from fresh_database("postgresql", tmp_path, request)
