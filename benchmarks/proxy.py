"""Proxy overhead: the time the proxy adds to a call, against the fake upstream called directly
in the same run, with budgets enforced and every cost event persisted.

    uv run python benchmarks/proxy.py

One client at a time, sequential calls: p50 and p99 of (via proxy - direct), non-streamed, and
time to first byte on streams. The proxy runs as its own process (uvicorn, one worker) on SQLite;
the fake upstream as another; the client in this one.
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nullspend_server.db.migrate import migrate
from tests.nullspend_server.conftest import _bootstrap, spawn_server

CALLS = 400
BODY = {
    "model": "gpt-4o-mini",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "Say hello"}],
}


def start_fake() -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "tests.fakes.upstream:create_app",
            "--port",
            "8931",
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=Path(__file__).resolve().parents[1],
    )
    for _ in range(200):
        try:
            httpx.post("http://127.0.0.1:8931/v1/chat/completions", json=BODY, timeout=1)
            return process, "http://127.0.0.1:8931"
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("fake upstream did not start")


def timed(client: httpx.Client, url: str, body: dict[str, object], first_byte: bool) -> float:
    start = time.perf_counter()
    if first_byte:
        with client.stream("POST", url, json=body) as response:
            chunks = response.iter_raw()
            next(chunks)
            elapsed = time.perf_counter() - start
            for _ in chunks:
                pass
            return elapsed
    client.post(url, json=body).raise_for_status()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        key = asyncio.run(_bootstrap(url))
        fake, fake_base = start_fake()
        proxy, proxy_base = spawn_server(url, openai_upstream=fake_base)
        try:
            headers = {"X-NullSpend-Key": key, "Authorization": "Bearer sk-bench"}
            with httpx.Client(headers=headers, timeout=30) as client:
                intro = client.get(f"{proxy_base}/api/auth/introspect").json()["data"]
                for entity_type, entity_id in (
                    ("user", intro["orgId"]),
                    ("api_key", intro["keyId"]),
                ):
                    client.post(
                        f"{proxy_base}/api/budgets",
                        json={
                            "entityType": entity_type,
                            "entityId": entity_id,
                            "limitMicrodollars": 10**12,
                        },
                    ).raise_for_status()
                results = {}
                for name, body, first_byte in (
                    ("non-streamed, total time", BODY, False),
                    ("streamed, time to first byte", {**BODY, "stream": True}, True),
                ):
                    added = []
                    for _ in range(CALLS):  # interleaved, so drift hits both sides alike
                        direct = timed(client, f"{fake_base}/v1/chat/completions", body, first_byte)
                        via = timed(client, f"{proxy_base}/v1/chat/completions", body, first_byte)
                        added.append((via - direct) * 1000)
                    results[name] = added
        finally:
            proxy.terminate()
            fake.terminate()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {CALLS} sequential calls each, SQLite, 2 budgets\n"
    )
    print("| added by the proxy | p50 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|")
    for name, added in results.items():
        print(
            f"| {name} | {percentile(added, 0.5):.2f} | {percentile(added, 0.99):.2f} | "
            f"{statistics.mean(added):.2f} |"
        )


if __name__ == "__main__":
    main()
