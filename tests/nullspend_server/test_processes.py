"""Several server processes on one database: one set of budgets, zero overspend, and nothing
lost when a process dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time

import httpx

from tests.fakes.upstream import run_fake_upstream
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
    """A process killed mid-call leaves its proxied calls' reservations behind: the survivor
    settles them at their estimate. A reservation made through the API is its client's (the
    SDK's) to settle, through any process: it stays, and its settle is its real cost. (It was
    charged its estimate too, so every restart billed the SDK's calls in flight at theirs.)"""
    key = asyncio.run(_bootstrap(database_url))
    headers = {"X-NullSpend-Key": key}
    with run_fake_upstream() as (upstream, _):
        process, base = spawn_server(database_url, openai_upstream=upstream)
        budget_id = httpx.post(
            f"{base}/api/budgets",
            headers=headers,
            json={"entityType": "user", "limitMicrodollars": LIMIT},
        ).json()["data"]["id"]
        sdk_call = httpx.post(
            f"{base}/api/reservations", headers=headers, json={"estimateMicrodollars": ESTIMATE}
        ).json()["data"]["reservationId"]
        hanging = {**headers, "Authorization": "Bearer sk-test", "x-fake-fault": "hang"}
        body = {
            "model": "gpt-4o-mini",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": "Hi"}],
        }
        calls = [
            threading.Thread(
                target=lambda: _proxied_until_dropped(f"{base}/v1/chat/completions", hanging, body)
            )
            for _ in range(3)
        ]
        for call in calls:
            call.start()
        proxied = _until_reserved(database_url, calls=3)
        os.kill(process.pid, signal.SIGKILL)  # no shutdown: its reservations are left behind
        process.wait()
        for call in calls:
            call.join(30)
    survivor = start_server(database_url, key, heartbeat_seconds=0.2)
    try:
        with survivor.client() as client:
            deadline = time.monotonic() + 20
            while (
                client.get(f"/api/budgets/{budget_id}").json()["data"]["reservedMicrodollars"]
                > ESTIMATE
            ):
                assert time.monotonic() < deadline, "the dead process's proxied calls remain"
                time.sleep(0.2)
            time.sleep(1)  # a few more recovery passes: the SDK's reservation must outlive them
            client.post(
                f"/api/reservations/{sdk_call}/settle", json={"costMicrodollars": 450}
            ).raise_for_status()
            state = client.get(f"/api/budgets/{budget_id}").json()["data"]
    finally:
        survivor.stop()
    assert (state["spendMicrodollars"], state["reservedMicrodollars"]) == (proxied + 450, 0)
    recovered = rows(
        database_url, "SELECT count(*) AS n FROM cost_event_tags WHERE key = :k", k="_ns_recovered"
    )
    assert recovered[0]["n"] == 3


def _proxied_until_dropped(url: str, headers: dict[str, str], body: dict[str, object]) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the process dies under it
        httpx.post(url, headers=headers, json=body, timeout=60)


def _until_reserved(database_url: str, calls: int) -> int:
    """Wait until ``calls`` proxied calls hold their reservations; answers what they hold."""
    deadline = time.monotonic() + 20
    query = (
        "SELECT count(*) AS n, sum(estimate_microdollars) AS held FROM reservations"
        " WHERE status = 'active' AND source = 'proxy'"
    )
    while (proxied := rows(database_url, query)[0])["n"] < calls:
        assert time.monotonic() < deadline, "the proxied calls were not reserved"
        time.sleep(0.1)
    return int(proxied["held"])
