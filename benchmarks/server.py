"""Server throughput: cost events ingested per second (single and batched) and reservation round
trips (reserve + settle) per second, on SQLite and on PostgreSQL, over real HTTP.

    uv run python benchmarks/server.py [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Each database gets a fresh schema and one server process (uvicorn, one worker) on loopback;
clients send from the same machine with a fixed concurrency, so the figures include HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psycopg
from sqlalchemy.engine import make_url

from nullspend_server.accounts import bootstrap
from nullspend_server.db.database import Database
from nullspend_server.db.migrate import migrate

CONCURRENCY = 16
SECONDS = 5.0
EVENT = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "inputTokens": 1200,
    "outputTokens": 300,
    "costMicrodollars": 360,
    "tags": {"team": "bench"},
}


async def admin_key(url: str) -> str:
    db = Database(url)
    try:
        async with db.sessions() as session:
            key = await bootstrap(session)
    finally:
        await db.dispose()
    assert key
    return key


def start_server(url: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "NULLSPEND_DATABASE_URL": url}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "nullspend_server.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/openapi.json", timeout=1)
            return process, base
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


async def rate(
    operation: Callable[[httpx.AsyncClient], Awaitable[int]], client: httpx.AsyncClient
) -> float:
    """Operations (events or round trips) per second at CONCURRENCY for SECONDS."""
    done = 0
    deadline = time.perf_counter() + SECONDS

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            finished = await operation(client)  # not `done += await ...`: that reads done
            done += finished  # before the await and loses the other workers' counts

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - start)


async def ingest_one(client: httpx.AsyncClient) -> int:
    response = await client.post("/api/cost-events", json=EVENT)
    assert response.status_code == 201, response.text
    return 1


async def ingest_batch(client: httpx.AsyncClient) -> int:
    response = await client.post("/api/cost-events/batch", json={"events": [EVENT] * 100})
    assert response.status_code in (200, 201), response.text
    return 100


async def reserve_and_settle(client: httpx.AsyncClient) -> int:
    reserved = await client.post(
        "/api/reservations", json={"estimateMicrodollars": 5_000, "tags": {"team": "bench"}}
    )
    assert reserved.status_code == 201, reserved.text
    rid = reserved.json()["data"]["reservationId"]
    settled = await client.post(
        f"/api/reservations/{rid}/settle",
        json={"costMicrodollars": 3_000, "model": "gpt-4o-mini", "provider": "openai"},
    )
    assert settled.status_code in (200, 201), settled.text
    return 1


async def measure(url: str) -> dict[str, float]:
    migrate(url)
    key = await admin_key(url)
    process, base = start_server(url)
    try:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            base_url=base, headers={"X-NullSpend-Key": key}, limits=limits, timeout=60
        ) as client:
            # budgets so the reservation path does real enforcement work (key, org and tag)
            intro = (await client.get("/api/auth/introspect")).json()["data"]
            for entity_type, entity_id in (
                ("user", intro["orgId"]),
                ("api_key", intro["keyId"]),
                ("tag", "team=bench"),
            ):
                response = await client.post(
                    "/api/budgets",
                    json={
                        "entityType": entity_type,
                        "entityId": entity_id,
                        "limitMicrodollars": 10**15,
                        "resetInterval": "monthly",
                    },
                )
                assert response.status_code == 201, response.text
            return {
                "events/s, one per request": await rate(ingest_one, client),
                "events/s, batches of 100": await rate(ingest_batch, client),
                "reserve+settle round trips/s (3 budgets)": await rate(reserve_and_settle, client),
            }
    finally:
        process.terminate()
        process.wait()


def postgres_database(admin_url: str) -> str:
    name = f"nullspend_bench_{secrets.token_hex(4)}"
    libpq = make_url(admin_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server's URL (a fresh database is created on it)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        targets = {
            "SQLite (WAL)": f"sqlite:///{Path(tmp) / 'bench.db'}",
            "PostgreSQL": postgres_database(args.postgres),
        }
        results = {name: asyncio.run(measure(url)) for name, url in targets.items()}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {CONCURRENCY} concurrent clients, {SECONDS:.0f} s each\n"
    )
    names = list(results)
    print("| measure | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for measure_name in next(iter(results.values())):
        print(
            f"| {measure_name} | "
            + " | ".join(f"{results[n][measure_name]:,.0f}" for n in names)
            + " |"
        )


if __name__ == "__main__":
    main()
