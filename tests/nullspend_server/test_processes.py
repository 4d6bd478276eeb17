"""Several server processes on one database: one set of budgets, zero overspend, and nothing
lost when a process dies."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import httpx

from tests.nullspend_server.conftest import _bootstrap, spawn_server, start_server
from tests.nullspend_server.dbtools import rows

LIMIT = 1_000_000
ESTIMATE = 10_000


async def _reserve_and_settle(bases: list[str], key: str, calls: int) -> list[int]:
    """``calls`` concurrent reserve-then-settle flows spread over the servers; returns the cost
    of each flow that was admitted (settled), 0 for a denied one."""
    rng = random.Random(7)
    costs = [rng.randint(1, ESTIMATE) for _ in range(calls)]
    clients = [
        httpx.AsyncClient(
            base_url=b,
            headers={"X-NullSpend-Key": key},
            timeout=120,
            limits=httpx.Limits(max_connections=40),
        )
        for b in bases
    ]

    async def flow(i: int) -> int:
        reserve_with, settle_with = clients[i % len(clients)], clients[(i + 1) % len(clients)]
        reserved = await reserve_with.post(
            "/api/reservations", json={"estimateMicrodollars": ESTIMATE}
        )
        if reserved.status_code == 429:
            return 0
        assert reserved.status_code == 201, reserved.text
        rid = reserved.json()["data"]["reservationId"]
        settled = await settle_with.post(
            f"/api/reservations/{rid}/settle", json={"costMicrodollars": costs[i]}
        )
        assert settled.status_code == 200, settled.text
        return costs[i]

    try:
        return await asyncio.gather(*(flow(i) for i in range(calls)))
    finally:
        for client in clients:
            await client.aclose()


def test_two_processes_on_postgres_never_overspend(postgres_url: str) -> None:
    key = asyncio.run(_bootstrap(postgres_url))
    servers = [spawn_server(postgres_url) for _ in range(2)]
    try:
        httpx.post(
            f"{servers[0][1]}/api/budgets",
            headers={"X-NullSpend-Key": key},
            json={"entityType": "user", "limitMicrodollars": LIMIT},
        ).raise_for_status()
        settled = asyncio.run(_reserve_and_settle([s[1] for s in servers], key, 400))
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=30)
    [budget] = rows(postgres_url, "SELECT spend_microdollars, reserved_microdollars FROM budgets")
    admitted = [cost for cost in settled if cost]
    assert budget["spend_microdollars"] == sum(admitted)
    assert budget["spend_microdollars"] <= LIMIT
    assert budget["reserved_microdollars"] == 0
    assert len(admitted) >= LIMIT // ESTIMATE  # every flow that fitted was admitted
    assert len(rows(postgres_url, "SELECT id FROM cost_events")) == len(admitted)


def test_a_killed_process_reservations_are_recovered(database_url: str) -> None:
    key = asyncio.run(_bootstrap(database_url))
    process, base = spawn_server(database_url)
    headers = {"X-NullSpend-Key": key}
    budget_id = httpx.post(
        f"{base}/api/budgets",
        headers=headers,
        json={"entityType": "user", "limitMicrodollars": LIMIT},
    ).json()["data"]["id"]
    for _ in range(3):
        httpx.post(
            f"{base}/api/reservations", headers=headers, json={"estimateMicrodollars": ESTIMATE}
        ).raise_for_status()
    os.kill(process.pid, signal.SIGKILL)  # no shutdown: its reservations are left behind
    process.wait()
    survivor = start_server(database_url, key, heartbeat_seconds=0.2)
    try:
        with survivor.client() as client:
            deadline = time.monotonic() + 20
            while client.get(f"/api/budgets/{budget_id}").json()["data"]["reservedMicrodollars"]:
                assert time.monotonic() < deadline, "the dead process's reservations remain"
                time.sleep(0.2)
            state = client.get(f"/api/budgets/{budget_id}").json()["data"]
    finally:
        survivor.stop()
    assert state["spendMicrodollars"] == 3 * ESTIMATE
    recovered = rows(
        database_url, "SELECT count(*) AS n FROM cost_event_tags WHERE key = :k", k="_ns_recovered"
    )
    assert recovered[0]["n"] == 3
