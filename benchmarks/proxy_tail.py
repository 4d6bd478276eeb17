"""Where NullSpend's slowest calls spend their time: sequential calls, each paired with a direct
call to the fake upstream, then the slowest 1.5 % listed with when they happened and how much of
them the proxy itself reported (``x-nullspend-overhead-ms``, its own time, the upstream's
excluded).

    uv run python benchmarks/proxy_tail.py [--calls 2000]

A slow call whose own time is small waited outside the proxy's code (the event loop busy or
blocked elsewhere, the machine descheduling the process); one whose own time is large was slow
inside it. Slow calls that come in clusters point at something periodic.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import BODY, ROUTE, UPSTREAM_KEY, percentile, start_nullspend, start_uvicorn, stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=2000)
    calls = parser.parse_args().calls
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        fake, fake_base = start_uvicorn("tests.fakes.upstream:create_app", {})
        stack.callback(stop, fake)
        proxy, base, headers = start_nullspend(tmp, fake_base)
        stack.callback(stop, proxy)
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) > 1:  # as benchmarks/proxy.py places them
            os.sched_setaffinity(proxy.pid, {cores[-1]})
            os.sched_setaffinity(fake.pid, set(cores[:-1]))
            os.sched_setaffinity(0, set(cores[:-1]))
        calls_made: list[tuple[float, float, float]] = []  # when, added ms, own ms
        with httpx.Client(timeout=30) as client:
            for _ in range(300):  # warm-up
                client.post(base + ROUTE, json=BODY, headers=headers).raise_for_status()
            begin = time.perf_counter()
            for _ in range(calls):
                start = time.perf_counter()
                client.post(fake_base + ROUTE, json=BODY, headers=UPSTREAM_KEY)
                direct = time.perf_counter() - start
                start = time.perf_counter()
                response = client.post(base + ROUTE, json=BODY, headers=headers)
                via = time.perf_counter() - start
                own = float(response.headers["x-nullspend-overhead-ms"])
                calls_made.append((start - begin, (via - direct) * 1000, own))
    added = [a for _, a, _ in calls_made]
    p50, p99 = percentile(added, 0.5), percentile(added, 0.99)
    print(f"{calls} calls: added p50 {p50:.2f} ms, p99 {p99:.2f}")
    threshold = percentile(added, 0.985)
    print("| at, s | added, ms | of which the proxy's own, ms |\n|---:|---:|---:|")
    for when, extra, own in calls_made:
        if extra >= threshold:
            print(f"| {when:.3f} | {extra:.2f} | {own:.2f} |")


if __name__ == "__main__":
    main()
