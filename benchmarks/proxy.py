"""Proxy overhead and throughput, against the fake upstream called directly in the same run.

    uv run python benchmarks/proxy.py [--calls 400] [--clients 32] [--seconds 10] [--warmup 2]

Every server runs as its own process (uvicorn, one worker, uvloop, warning logs, no access log):
the fake upstream; the NullSpend proxy on SQLite with two budgets enforced and every cost event
persisted; the floor, a bare pass-through with no accounting (benchmarks/passthrough.py); and
LiteLLM's proxy (its own CLI, no database, so no budgets and no spend logs).

1. Latency: one client, sequential calls, one proxy at a time; each round calls the fake
   upstream directly, then through the proxy, so drift hits both alike. Non-streamed total time
   and time to first byte on streams: p50/p99 of the paired difference (via - direct), of each
   distribution, and p99(via) - p99(direct).
2. Throughput: 32 concurrent clients (an asyncio aiohttp load generator in its own process),
   non-streamed calls, successful responses per second over a fixed window after a warm-up, with
   the CPU each process used in the window (100% = one core): on a 2-core machine the client,
   the proxy and the upstream share the cores, so the figures compare, they are not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, closing
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import aiohttp
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nullspend_server.db.migrate import migrate
from tests.nullspend_server.conftest import _bootstrap, spawn_server

ROOT = Path(__file__).resolve().parents[1]
ROUTE = "/v1/chat/completions"
BODY = {
    "model": "gpt-4o-mini",
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "Say hello"}],
}
UPSTREAM_KEY = {"Authorization": "Bearer sk-bench"}
LITELLM_KEY = "sk-litellm-bench"
COMPLETION = b"chatcmpl-fake"  # the fake upstream's completion id: proof the call got through
Headers = dict[str, str]
Target = tuple[str, str, Headers, int]  # name, base URL, headers, server pid
LATENCY_HEADER = (
    "| sequential, ms | added p50 | added p99 | added mean | direct p50 | direct p99 | via p50 "
    "| via p99 | p99 via - p99 direct |"
)


# --- processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_for_completion(
    process: subprocess.Popen[bytes], base: str, headers: Headers, seconds: float
) -> None:
    """Until a chat completion through `base` answers 200 with the fake upstream's body."""
    deadline, last = time.monotonic() + seconds, "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{base}: the process exited ({process.returncode}); {last}")
        try:
            response = httpx.post(base + ROUTE, json=BODY, headers=headers, timeout=5)
            if response.status_code == 200 and COMPLETION in response.content:
                return
            last = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.TransportError as error:
            last = repr(error)
        time.sleep(0.1)
    raise RuntimeError(f"{base} did not answer a completion in {seconds:.0f} s; {last}")


def start_uvicorn(factory: str, env: Headers) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env})
    return process, f"http://127.0.0.1:{port}"


def start_nullspend(tmp: str, upstream: str) -> tuple[subprocess.Popen[bytes], str, Headers]:
    """As a deployment runs it, with two budgets (organization and key) and no rate limit."""
    url = f"sqlite:///{tmp}/bench.db"
    migrate(url)
    headers = {"X-NullSpend-Key": asyncio.run(_bootstrap(url)), **UPSTREAM_KEY}
    process, base = spawn_server(url, openai_upstream=upstream, rate_limit_per_minute=str(10**9))
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        intro = client.get("/api/auth/introspect").json()["data"]
        for entity_type, entity_id in (("user", intro["orgId"]), ("api_key", intro["keyId"])):
            budget = {"entityType": entity_type, "entityId": entity_id, "limitMicrodollars": 10**12}
            client.post("/api/budgets", json=budget).raise_for_status()
    return process, base, headers


def start_litellm(tmp: str, upstream: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    config = Path(tmp, "litellm.yaml")
    config.write_text(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n"
        f"      model: openai/gpt-4o-mini\n      api_base: {upstream}/v1\n      api_key: sk-fake\n"
    )
    env = {
        **os.environ,
        "LITELLM_MASTER_KEY": LITELLM_KEY,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network: the bundled price map
        "LITELLM_LOG": "ERROR",
    }
    port, log = free_port(), Path(tmp, "litellm.stderr")
    command = [str(Path(sys.executable).with_name("litellm")), "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    command += ["--telemetry", "False"]
    with log.open("wb") as err:
        process = subprocess.Popen(command, cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=err)
    return process, f"http://127.0.0.1:{port}", log


# --- sequential latency --------------------------------------------------------------------


def timed(
    client: httpx.Client, url: str, headers: Headers, body: dict[str, object], first_byte: bool
) -> float:
    start = time.perf_counter()
    if first_byte:
        with client.stream("POST", url, json=body, headers=headers) as response:
            chunks = response.iter_raw()
            next(chunks)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            for _ in chunks:
                pass
            return elapsed
    client.post(url, json=body, headers=headers).raise_for_status()
    return time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sequential(
    direct: tuple[str, Headers], proxies: dict[str, tuple[str, Headers]], calls: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Milliseconds per call, keyed 'measure|proxy': (through the proxy, direct). One proxy at a
    time, as a deployment runs it: each round calls the fake upstream directly, then through
    that proxy, so drift hits both alike; another proxy's calls in between would share the
    proxy's core and evict its caches."""
    samples: dict[str, tuple[list[float], list[float]]] = {}
    with httpx.Client(timeout=30) as client:
        for measure, body, first_byte in (
            ("non-streamed, total", BODY, False),
            ("streamed, first byte", {**BODY, "stream": True}, True),
        ):
            for name, (base, headers) in proxies.items():
                via, plain = samples.setdefault(f"{measure}|{name}", ([], []))
                for _ in range(calls):
                    seconds = timed(client, direct[0] + ROUTE, direct[1], body, first_byte)
                    plain.append(seconds * 1000)
                    seconds = timed(client, base + ROUTE, headers, body, first_byte)
                    via.append(seconds * 1000)
    return samples


def print_latency(samples: dict[str, tuple[list[float], list[float]]]) -> None:
    print(LATENCY_HEADER + "\n|---|" + "---:|" * 8)
    for key, (via, direct) in samples.items():
        measure, path = key.split("|")
        added = [v - d for v, d in zip(via, direct, strict=True)]
        figures = [percentile(added, 0.5), percentile(added, 0.99), statistics.mean(added)]
        figures += [percentile(direct, 0.5), percentile(direct, 0.99)]
        figures += [percentile(via, 0.5), percentile(via, 0.99)]
        figures.append(percentile(via, 0.99) - percentile(direct, 0.99))
        print(f"| {measure}, {path} | " + " | ".join(f"{f:.2f}" for f in figures) + " |")


# --- throughput (run in a separate process) ------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {"client": time.process_time(), **{n: cpu_seconds(p) for n, p in pids.items()}}


async def _load(
    url: str, headers: Headers, clients: int, warmup: float, seconds: float, pids: dict[str, int]
) -> tuple[dict[str, int], dict[str, float]]:
    payload = json.dumps(BODY).encode()
    headers = {**headers, "Content-Type": "application/json"}
    begin, end = time.perf_counter() + warmup, time.perf_counter() + warmup + seconds
    outcomes: Counter[str] = Counter()

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < end:
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    content = await response.read()
                outcome = "ok" if COMPLETION in content else "no completion"
                if response.status != 200:
                    outcome = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as error:
                outcome = type(error).__name__
            if begin <= time.perf_counter() < end:
                outcomes[outcome] += 1

    async def measure_cpu() -> dict[str, float]:
        await asyncio.sleep(begin - time.perf_counter())
        first, started = cpu_snapshot(pids), time.perf_counter()
        await asyncio.sleep(end - time.perf_counter())
        last, elapsed = cpu_snapshot(pids), time.perf_counter() - started
        return {name: (last[name] - first[name]) / elapsed for name in first}

    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu = asyncio.create_task(measure_cpu())
        await asyncio.gather(*(worker(session) for _ in range(clients)))
        return dict(outcomes), await cpu


def run_load(
    url: str, headers: Headers, clients: int, warmup: float, seconds: float, pids: dict[str, int]
) -> tuple[dict[str, int], dict[str, float]]:
    return uvloop.run(_load(url, headers, clients, warmup, seconds, pids))


def throughput(targets: dict[str, Target], args: argparse.Namespace) -> dict[str, float]:
    """Successful responses per second for each target, one after the other."""
    print(
        f"\n| {args.clients} clients, {args.seconds:.0f} s after {args.warmup:.0f} s warm-up "
        "| requests/s | ok | errors / non-200 | CPU: client | proxy | upstream |"
    )
    print("|---|" + "---:|" * 6)
    fake_pid, rates = targets["direct"][3], {}
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        for key, (name, base, headers, pid) in targets.items():
            pids = {"upstream": fake_pid} | ({"proxy": pid} if pid != fake_pid else {})
            job = (base + ROUTE, headers, args.clients, args.warmup, args.seconds, pids)
            future = pool.submit(run_load, *job)
            outcomes, cpu = future.result(timeout=args.warmup + args.seconds + 60)
            ok = outcomes.pop("ok", 0)
            rates[key] = ok / args.seconds
            errors = ", ".join(f"{k}: {v}" for k, v in outcomes.items()) or "0"
            shares = [f"{cpu[k]:.0%}" if k in cpu else "-" for k in ("client", "proxy", "upstream")]
            print(f"| {name} | {rates[key]:,.0f} | {ok:,} | {errors} | {' | '.join(shares)} |")
    return rates


# --- the run -------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=400, help="sequential calls per measure")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput window")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before the window")
    parser.add_argument(
        "--no-pin", dest="pin", action="store_false", help="let the OS place every process"
    )
    return parser.parse_args()


def pin(targets: dict[str, Target]) -> str:
    """The proxies under test on the last core; this client and the fake upstream, which stand
    in for machines of their own in a deployment, on the others. Without it, on a small
    machine, the three processes of one call contend for the same cores and the scheduler's
    noise swamps the differences measured. Returns how the processes were placed."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return "not pinned (one core)"
    proxies, others = {cores[-1]}, set(cores[:-1])
    os.sched_setaffinity(0, others)
    for name, (*_, pid) in targets.items():
        os.sched_setaffinity(pid, others if name == "direct" else proxies)
    return f"proxies pinned to core {cores[-1]}, client and fake upstream to {sorted(others)}"


def start_servers(tmp: str, stack: ExitStack) -> dict[str, Target]:
    """The fake upstream, then every proxy in front of it, each answering a completion."""
    fake, fake_base = start_uvicorn("tests.fakes.upstream:create_app", {})
    stack.callback(stop, fake)
    wait_for_completion(fake, fake_base, UPSTREAM_KEY, 30)
    litellm, litellm_base, litellm_log = start_litellm(tmp, fake_base)  # the slowest to start
    stack.callback(stop, litellm)
    floor, floor_base = start_uvicorn(
        "benchmarks.passthrough:create_app", {"PASSTHROUGH_UPSTREAM": fake_base}
    )
    stack.callback(stop, floor)
    wait_for_completion(floor, floor_base, UPSTREAM_KEY, 30)
    proxy, proxy_base, proxy_headers = start_nullspend(tmp, fake_base)
    stack.callback(stop, proxy)
    litellm_headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
    try:
        wait_for_completion(litellm, litellm_base, litellm_headers, 120)
    except RuntimeError:
        print(litellm_log.read_text()[-3000:], file=sys.stderr)
        raise
    return {
        "direct": ("fake upstream, direct", fake_base, UPSTREAM_KEY, fake.pid),
        "NullSpend": ("NullSpend (SQLite, 2 budgets)", proxy_base, proxy_headers, proxy.pid),
        "floor": ("floor pass-through", floor_base, UPSTREAM_KEY, floor.pid),
        "LiteLLM": ("LiteLLM proxy (no DB)", litellm_base, litellm_headers, litellm.pid),
    }


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cleanups run
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        os.environ["UVICORN_ACCESS_LOG"] = "false"  # spawn_server's uvicorn: no access log
        # Bytecode cached, as deployed: without it LiteLLM recompiles, on every request, a
        # module whose import fails here (its OpenTelemetry SDK is not installed).
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = f"{tmp}/pycache"
        targets = start_servers(tmp, stack)
        placement = pin(targets) if args.pin else "not pinned"
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; nullspend-server {version('nullspend-server')}, "
            f"litellm {version('litellm')}; {placement}\n\n"
            f"{args.calls} sequential calls per measure; "
            "NullSpend: SQLite, 2 budgets, every cost event persisted\n"
        )
        proxies = {path: targets[path][1:3] for path in ("NullSpend", "floor")}
        print_latency(sequential(targets["direct"][1:3], proxies, args.calls))
        rates = throughput(targets, args)
        stack.close()  # every server stops; NullSpend settles what is pending as it does
        with closing(sqlite3.connect(f"{tmp}/bench.db")) as db:
            (events,) = db.execute("SELECT count(*) FROM cost_events").fetchone()
    print(
        f"\nNullSpend / LiteLLM throughput: {rates['NullSpend'] / rates['LiteLLM']:.2f}x. "
        f"NullSpend persisted {events:,} cost events (it answered at least "
        f"{2 * args.calls + rates['NullSpend'] * args.seconds:,.0f} calls)."
        "\nCaveat: LiteLLM runs without a database (its budgets and spend logs need Prisma and "
        "PostgreSQL, not set up here),\nso it enforces no budget and records no spend: the "
        "comparison favours LiteLLM."
    )


if __name__ == "__main__":
    main()
