"""``CostReporter`` against a real server: batches of at most 100, sent on an interval and at
close, never blocking the caller, retried without double counting, drops counted. And the
server side of it: a batch sent again under the same Idempotency-Key is recorded once."""

from __future__ import annotations

import asyncio
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nullspend.client import AsyncNullSpend, CostReporter, NewCostEvent, NullSpend, RecordedBatch
from nullspend.embedded import AsyncLocalNullSpend, LocalNullSpend
from nullspend.errors import ConflictError, ValidationError
from tests.fakes.upstream import serving
from tests.nullspend_server.conftest import RunningServer
from tests.sdk.test_client import Flaky, flaky  # noqa: F401 (fixture)

EVENT = NewCostEvent(provider="openai", model="gpt-4o-mini", input_tokens=1_000)  # 150 µ$


def test_a_batch_sent_twice_is_recorded_once(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        first = ns.report_batch([EVENT, EVENT], idempotency_key="batch-1")
        again = ns.report_batch([EVENT, EVENT], idempotency_key="batch-1")
        assert again.ids == first.ids
        assert len(ns.cost_events().data) == 2
        with pytest.raises(ConflictError):
            ns.report_batch([EVENT], idempotency_key="batch-1")
        with pytest.raises(ValidationError):  # keys are stored as <key>#<index>
            ns.report_batch([EVENT], idempotency_key="batch#1")


def test_batches_interval_and_close(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        reporter = CostReporter(ns, interval=30)  # only full batches go before close
        started = time.perf_counter()
        for _ in range(250):
            assert reporter.report(EVENT)
        assert time.perf_counter() - started < 0.5  # the caller never waits on the server
        deadline = time.monotonic() + 10
        while reporter.stats.sent < 200:  # two full batches, without waiting for the interval
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert reporter.stats.queued == 50
        reporter.close()
        assert reporter.stats.sent == 250
        total, cursor = 0, None
        while True:
            page = ns.cost_events(limit=200, cursor=cursor)
            total += len(page.data)
            if (cursor := page.cursor) is None:
                break
        assert total == 250
        assert not reporter.report(EVENT)  # closed: refused, and counted
        assert reporter.stats.dropped_full == 1


def test_flush_on_the_interval(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        reporter = CostReporter(ns, interval=0.1)
        reporter.report(EVENT)
        deadline = time.monotonic() + 5
        while not ns.cost_events().data:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert reporter.flush(5)
        reporter.close()


def test_flush_while_a_batch_is_being_sent(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flush()'s wake-up reached no one while the thread was sending a batch: it then waited
    the interval (30 s here) before sending what flush() was asked to send, and flush(10)
    answered False."""
    with NullSpend(server.admin_key, server.base_url) as ns:
        answered, sending = threading.Event(), threading.Event()
        report_batch = ns.report_batch

        def held(events: list[NewCostEvent], **options: Any) -> RecordedBatch:
            sending.set()
            answered.wait(10)
            return report_batch(events, **options)

        monkeypatch.setattr(ns, "report_batch", held)
        reporter = CostReporter(ns, interval=30, batch_size=2)
        reporter.report(EVENT)
        reporter.report(EVENT)  # a full batch: sent at once, its answer held
        assert sending.wait(10)
        reporter.report(EVENT)
        threading.Timer(0.2, answered.set).start()
        assert reporter.flush(10)
        assert reporter.stats.sent == 3
        reporter.close()


def test_a_full_queue_drops_and_counts(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        reporter = CostReporter(ns, interval=30, max_queue=5, batch_size=10)
        accepted = [reporter.report(EVENT) for _ in range(8)]
        assert accepted == [True] * 5 + [False] * 3
        assert reporter.stats.dropped_full == 3
        reporter.close()
        assert reporter.stats.sent == 5


def test_failures_are_retried_with_one_key(flaky: tuple[str, Flaky]) -> None:  # noqa: F811
    base, handler = flaky  # two 503s, then 201
    with NullSpend("ns_live_sk_" + "1" * 32, base, max_retries=0) as ns:
        reporter = CostReporter(ns, interval=0.05, attempts=3)
        reporter.report(EVENT)
        assert reporter.flush(10)
        reporter.close()
    assert [path for path, _ in handler.seen] == ["/api/cost-events/batch"] * 3
    assert len({key for _, key in handler.seen}) == 1
    assert reporter.stats.sent == 1


def test_a_negative_retry_after_is_no_wait(flaky: tuple[str, Flaky]) -> None:  # noqa: F811
    """A misbehaving proxy's Retry-After of -1 made the wait negative: the sleep raised, and
    the sending thread died with the batch. The backoff applies instead."""
    base, handler = flaky
    handler.retry_after = "-1"
    with NullSpend("ns_live_sk_" + "1" * 32, base, max_retries=0) as ns:
        reporter = CostReporter(ns, interval=0.05, attempts=3)
        reporter.report(EVENT)
        assert reporter.flush(10)
        reporter.close()
    assert reporter.stats.sent == 1


def test_an_asyncio_client_reports_with_its_synchronous_twin(server: RunningServer) -> None:
    """No thread awaits an asyncio client's ``report_batch``: its coroutines were dropped,
    counted as sent, and nothing reached the server."""
    ans = AsyncNullSpend(server.admin_key, server.base_url)
    reporter = CostReporter(ans, interval=30)
    for _ in range(5):
        reporter.report(EVENT)
    asyncio.run(ans.close())  # which sends what its reporter holds
    assert reporter.stats.sent == 5
    with NullSpend(server.admin_key, server.base_url) as ns:
        assert len(ns.cost_events().data) == 5

    local = AsyncLocalNullSpend()
    reporter = CostReporter(local, interval=30)
    reporter.report(EVENT)
    reporter.close()
    assert len(local.engine.cost_events().data) == 1

    class Awaited:
        async def report_batch(
            self, events: list[NewCostEvent], *, idempotency_key: str | None = None
        ) -> RecordedBatch:
            raise AssertionError("never awaited")

    with pytest.raises(TypeError, match="synchronous client"):
        CostReporter(Awaited())  # type: ignore[arg-type]


def test_hopeless_batches_are_dropped_and_counted() -> None:
    with NullSpend("ns_live_sk_" + "1" * 32, "http://127.0.0.1:9", max_retries=0) as ns:
        reporter = CostReporter(ns, interval=0.05, attempts=2)
        reporter.report(EVENT)
        assert reporter.flush(10)
        reporter.close()
    assert (reporter.stats.sent, reporter.stats.dropped_failed) == (0, 1)


def test_an_unexpected_error_is_counted_and_the_thread_lives_on(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        reporter = CostReporter(ns, interval=0.05)
        monkeypatch.setattr(ns, "report_batch", lambda *a, **k: (_ for _ in ()).throw(ValueError))
        reporter.report(EVENT)
        assert reporter.flush(5)
        assert reporter.stats.dropped_failed == 1
        monkeypatch.undo()
        reporter.report(EVENT)
        reporter.close()
        assert reporter.stats.sent == 1


def test_what_is_queued_is_sent_at_interpreter_exit(server: RunningServer) -> None:
    script = (
        "import sys\n"
        "from nullspend.client import CostReporter, NewCostEvent, NullSpend\n"
        "reporter = CostReporter(NullSpend(sys.argv[1], sys.argv[2]), interval=3600)\n"
        "for _ in range(3):\n"
        "    reporter.report(NewCostEvent(provider='openai', model='gpt-4o-mini'))\n"
        # no close(): the process just ends
    )
    done = subprocess.run(
        [sys.executable, "-c", script, server.admin_key, server.base_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    with NullSpend(server.admin_key, server.base_url) as ns:
        assert len(ns.cost_events().data) == 3


def test_exit_with_the_server_down_is_bounded_and_says_what_it_lost() -> None:
    """With the server down, exit waited on each reporter and each settle queue in turn (19 s
    to refuse connections, 31 s against a server that never answers: past a deployment's
    grace period), and said 200 events were lost where 300 were (the batch being sent was not
    counted), and nothing of the settles. The exit's work now shares one time budget, and
    what it leaves is counted."""
    script = (
        "import sys, logging, time\n"
        "logging.basicConfig()\n"
        "from nullspend.client import CostReporter, NewCostEvent, NullSpend, processes\n"
        "processes.EXIT_SECONDS = 2.0\n"
        "ns = NullSpend('ns_live_sk_' + '1' * 32, 'http://127.0.0.1:9')\n"
        "reporter = CostReporter(ns, interval=3600)\n"
        "for _ in range(300):\n"
        "    reporter.report(NewCostEvent(provider='openai', model='gpt-4o-mini'))\n"
        "for n in range(5):\n"
        "    ns.settle_later(f'rsv_{n:032d}', cost_microdollars=1)\n"
        "time.sleep(0.5)\n"
        "print(reporter.stats.queued, flush=True)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "300"  # the batch being sent too
    assert "300 cost events were not sent" in done.stderr
    assert "5 settles and releases were not sent" in done.stderr
    assert took < 15, took  # 19-31 s before; 2 s of exit work here, the rest start-up


def test_closing_the_client_sends_what_its_reporter_holds(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        reporter = CostReporter(ns, interval=30)
        for _ in range(5):
            reporter.report(EVENT)
    assert reporter.stats.sent == 5
    with NullSpend(server.admin_key, server.base_url) as reader:
        assert len(reader.cost_events(limit=10).data) == 5


def test_one_bad_event_costs_only_itself(server: RunningServer) -> None:
    """The server records a batch all or none: a batch it refuses for one event is sent again
    event by event, so the others are recorded and only the bad one is dropped."""
    unpriced = NewCostEvent(provider="openai", model="no-such-model", input_tokens=10)
    with NullSpend(server.admin_key, server.base_url) as ns:
        reporter = CostReporter(ns, interval=30)
        for i in range(10):
            reporter.report(unpriced if i == 4 else EVENT)
        reporter.close()
        assert (reporter.stats.sent, reporter.stats.dropped_failed) == (9, 1)
        assert len(ns.cost_events(limit=20).data) == 9


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": -1}, "interval"),
        ({"interval": float("nan")}, "interval"),
        ({"attempts": 0}, "attempts"),
        ({"batch_size": 101}, "batch_size"),
    ],
)
def test_options_that_cannot_work_are_refused(options: dict[str, Any], message: str) -> None:
    """``interval=0`` left the idle thread spinning (a quarter of a core, sending nothing);
    ``attempts=0`` never sent a batch, nor counted it dropped: flush() said done, with the
    events still counted as queued."""
    with (
        NullSpend("ns_live_sk_" + "1" * 32, "http://127.0.0.1:9") as ns,
        pytest.raises(ValueError, match=message),
    ):
        CostReporter(ns, **options)


def test_a_batch_over_a_proxys_body_limit_is_sent_event_by_event(server: RunningServer) -> None:
    """A proxy in front of the server refuses bodies over its limit (nginx: 1 MB by default)
    with its own 413 page: the whole batch was dropped, though each event fits."""

    async def body_limit(request: Request) -> Response:
        body = await request.body()
        if len(body) > 2_000:
            return Response(b"<html>413 Request Entity Too Large</html>", 413)
        async with httpx.AsyncClient(base_url=server.base_url) as upstream:
            real = await upstream.post(
                request.url.path,
                content=body,
                headers={k: v for k, v in request.headers.items() if k != "host"},
            )
        return Response(real.content, real.status_code, media_type="application/json")

    app = Starlette(routes=[Route("/api/cost-events/batch", body_limit, methods=["POST"])])
    with serving(app) as base, NullSpend(server.admin_key, base) as ns:
        reporter = CostReporter(ns, interval=30)
        for _ in range(10):
            reporter.report(EVENT)
        reporter.close()
    assert (reporter.stats.sent, reporter.stats.dropped_failed) == (10, 0)
    with NullSpend(server.admin_key, server.base_url) as reader:
        assert len(reader.cost_events(limit=20).data) == 10


def _report_into_a_file(path: str) -> None:
    reporter = CostReporter(LocalNullSpend(path=path), interval=3600)
    for _ in range(3):
        reporter.report(EVENT)


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_a_multiprocessing_child_reports_into_its_engine_before_it_closes(
    tmp_path: Path, start_method: str
) -> None:
    """A child multiprocessing starts ends with ``os._exit``: its exit work runs as finalizers,
    newest first, which closed the embedded engine before the reporter sent into it ("this
    LocalNullSpend is closed"), and the child's 3 events were lost."""
    path = str(tmp_path / "spend.db")
    child = multiprocessing.get_context(start_method).Process(
        target=_report_into_a_file, args=(path,)
    )
    child.start()
    child.join(60)
    assert child.exitcode == 0
    engine = LocalNullSpend(path=path)
    try:
        assert len(engine.cost_events().data) == 3
    finally:
        engine.close()
