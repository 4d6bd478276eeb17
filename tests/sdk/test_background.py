"""``Background``: the thread that settles off the caller's path. In order, never dropped (a
full queue runs the work on the caller's thread), failures logged, flushed on demand and at
interpreter exit, and no thread left behind once idle."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nullspend.client import AsyncNullSpend, CostReporter, NewCostEvent, NullSpend, background
from nullspend.client.background import Background
from nullspend.errors import ConnectionFailedError
from tests.fakes.upstream import serving
from tests.nullspend_server.conftest import RunningServer, start_server
from tests.nullspend_server.dbtools import rows


def test_in_order_and_flushed() -> None:
    done: list[int] = []
    runner = Background()
    for i in range(200):
        runner.submit(lambda i=i: done.append(i), f"work {i}")
    assert runner.flush(timeout=10)
    assert done == list(range(200))
    assert runner.pending == 0


def test_a_failure_is_logged_and_the_rest_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def fail() -> None:
        raise ConnectionError("server gone")

    runner = Background()
    with caplog.at_level(logging.WARNING, logger="nullspend.client"):
        runner.submit(fail, "settling rsv_1")
        runner.submit(lambda: done.append("next"), "settling rsv_2")
        assert runner.flush(timeout=10)
    assert done == ["next"]
    assert "settling rsv_1 failed (server gone)" in caplog.text


def test_a_full_queue_runs_the_work_on_the_caller_thread() -> None:
    gate = threading.Event()
    threads: list[int] = []
    runner = Background(max_queue=1)
    runner.submit(lambda: gate.wait(10), "held")  # the thread takes it and waits
    deadline = time.monotonic() + 10
    while runner._queue.qsize():  # until the thread has taken it
        assert time.monotonic() < deadline
        time.sleep(0.001)
    runner.submit(lambda: threads.append(threading.get_ident()), "queued")
    runner.submit(lambda: threads.append(threading.get_ident()), "no room")
    assert threads == [threading.get_ident()]  # the third ran at once, here
    gate.set()
    assert runner.flush(timeout=10)
    assert len(threads) == 2
    assert threads[1] != threading.get_ident()


def test_an_event_loops_work_is_never_run_on_its_thread(caplog: pytest.LogCaptureFixture) -> None:
    """``AsyncNullSpend`` settles from the event loop: with the server slow, a full queue ran
    each further settle there, and stalled the loop 2.8 s a call. Its queue grows instead,
    with a warning each time it passes another bound's worth."""
    gate = threading.Event()
    threads: list[int] = []
    runner = Background(max_queue=3, caller_may_wait=False)
    runner.submit(lambda: gate.wait(10), "held")
    for _ in range(7):
        runner.submit(lambda: threads.append(threading.get_ident()), "queued")
    assert threads == []  # none ran here
    assert any("wait to be sent" in r.message for r in caplog.records)
    gate.set()
    assert runner.flush(timeout=10)
    assert len(threads) == 7
    assert threading.get_ident() not in threads
    assert AsyncNullSpend("ns_test", "http://127.0.0.1:9")._settler._caller_may_wait is False


def test_the_thread_ends_when_idle_and_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(background, "IDLE_SECONDS", 0.02)
    done: list[int] = []
    runner = Background()
    runner.submit(lambda: done.append(1), "first")
    assert runner.flush(timeout=10)
    deadline = time.monotonic() + 10
    while runner._thread is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    runner.submit(lambda: done.append(2), "second")
    assert runner.flush(timeout=10)
    assert done == [1, 2]


def test_close_sends_what_is_queued_and_ends_the_thread_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without waiting for the idle time (an hour here; close waits 10 s at most): at interpreter
    exit no thread of ours is left running while the interpreter is torn down. Work submitted
    later starts a new one."""
    monkeypatch.setattr(background, "IDLE_SECONDS", 3600.0)
    done: list[int] = []
    runner = Background()
    gate = threading.Event()
    runner.submit(lambda: gate.wait(10), "held")
    runner.submit(lambda: done.append(1), "queued")
    thread = runner._thread
    assert thread is not None
    gate.set()
    runner.close(timeout=10)
    assert done == [1]
    assert not thread.is_alive()
    assert runner._thread is None
    runner.submit(lambda: done.append(2), "later")
    assert runner.flush(timeout=10)
    assert done == [1, 2]
    runner.close(timeout=10)
    runner.close(timeout=10)  # closing twice, or with no thread, is nothing


def test_what_is_queued_is_sent_at_exit(tmp_path: Path) -> None:
    marker = tmp_path / "settled"
    script = f"""
import time
from pathlib import Path
from nullspend.client.background import Background

runner = Background()
runner.submit(lambda: (time.sleep(0.3), Path({str(marker)!r}).write_text("yes")), "late")
"""  # and the interpreter exits at once
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert marker.read_text() == "yes"


def _settle_one_in_child(ns: NullSpend) -> None:
    """In a forked child: reserve at once, settle from the background thread, and return
    (multiprocessing then ends the child with os._exit, which skips atexit)."""
    ns.settle_later(ns.reserve_id(1_000), cost_microdollars=700)


def test_a_forked_child_settles_and_sends_before_it_ends(server: RunningServer) -> None:
    """The parent's background thread and pooled connections do not carry over a fork: the
    child starts its own, and its queued settles go before multiprocessing ends it."""
    with NullSpend(server.admin_key, server.base_url) as ns:
        ns.settle_later(ns.reserve_id(1_000), cost_microdollars=700)  # the parent's thread runs
        assert ns.flush(10)
        fork = multiprocessing.get_context("fork")
        children = [fork.Process(target=_settle_one_in_child, args=(ns,)) for _ in range(3)]
        for child in children:
            child.start()
        for child in children:
            child.join(30)
            assert child.exitcode == 0
        assert len(ns.cost_events(limit=10).data) == 4
        assert all(b.reserved_microdollars == 0 for b in ns.budget_status())
        ns.settle_later(ns.reserve_id(1_000), cost_microdollars=700)  # the parent's still works
        assert ns.flush(10)
        assert len(ns.cost_events(limit=10).data) == 5


def _report_in_child(reporter: CostReporter) -> None:
    for _ in range(5):
        assert reporter.report(NewCostEvent(provider="openai", model="x", cost_microdollars=1))


def test_a_forked_child_reports_through_the_parents_reporter(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        reporter = CostReporter(ns, interval=30)  # only close sends a part batch
        reporter.report(NewCostEvent(provider="openai", model="x", cost_microdollars=1))
        child = multiprocessing.get_context("fork").Process(
            target=_report_in_child, args=(reporter,)
        )
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert len(ns.cost_events(limit=10).data) == 5  # the child's, sent as it ended
        reporter.close()
        assert len(ns.cost_events(limit=10).data) == 6  # and the parent's, not sent twice


def _reserve_and_settle_async_in_child(ans: AsyncNullSpend) -> None:
    async def run() -> None:
        ans.settle_later(await ans.reserve_id(1_000), cost_microdollars=700)

    asyncio.run(run())


def test_a_forked_child_uses_the_parents_async_client(server: RunningServer) -> None:
    """The child makes its own connections: the parent's pooled ones are sockets it shares
    (and belong to the parent's event loop)."""

    async def main() -> None:
        async with AsyncNullSpend(server.admin_key, server.base_url) as ans:
            ans.settle_later(await ans.reserve_id(1_000), cost_microdollars=700)
            assert await ans.flush(10)
            fork = multiprocessing.get_context("fork")
            children = [
                fork.Process(target=_reserve_and_settle_async_in_child, args=(ans,))
                for _ in range(3)
            ]
            for child in children:
                child.start()
            for child in children:
                await asyncio.to_thread(child.join, 30)
                assert child.exitcode == 0
            ans.settle_later(await ans.reserve_id(1_000), cost_microdollars=700)  # still works
            assert await ans.flush(10)
            assert len((await ans.cost_events(limit=10)).data) == 5

    asyncio.run(main())


def test_a_settle_that_came_after_its_reservation_expired_says_so(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A call that outlived its reservation's TTL was charged its estimate by the expiry, and
    its settle refused: the warning said the reservation "will expire", as if the cost would
    still be counted. It now says what happened."""
    server = start_server(database_url, reservation_ttl_seconds=1, heartbeat_seconds=0.2)
    try:
        with NullSpend(server.admin_key, server.base_url) as ns:
            reservation = ns.reserve(100)
            deadline = time.monotonic() + 15
            while rows(database_url, "SELECT status FROM reservations")[0]["status"] != "expired":
                assert time.monotonic() < deadline, "the reservation did not expire"
                time.sleep(0.1)
            with caplog.at_level(logging.WARNING, logger="nullspend.client"):
                ns.settle_later(reservation.reservation_id, cost_microdollars=5)
                assert ns.flush(timeout=10)
        assert "came after its reservation expired" in caplog.text
    finally:
        server.stop()


def test_a_caller_on_an_event_loop_never_sends_a_settle_itself() -> None:
    """With the queue full, a settle was sent on the caller's thread: from async code with a
    sync client (the LlamaIndex gate settles so), that froze the event loop for the settle's
    round trip, its retries too. A caller on a running loop queues it, past the bound."""
    gate = threading.Event()
    ran_on: list[int] = []
    queue = Background(max_queue=2)

    def work() -> None:
        gate.wait(10)
        ran_on.append(threading.get_ident())

    async def from_the_loop() -> None:
        for _ in range(5):  # the first is taken by the thread, which waits on the gate
            queue.submit(work, "settling")

    asyncio.run(from_the_loop())
    # From a thread that may wait: at once, on it.
    queue.submit(lambda: ran_on.append(threading.get_ident()), "settling")
    assert ran_on == [threading.get_ident()]
    gate.set()
    assert queue.flush(10)
    assert len(ran_on) == 6
    assert ran_on.count(threading.get_ident()) == 1


def _answering(answers: list[Response]) -> Starlette:
    async def settle(request: Request) -> Response:
        return answers.pop(0)

    return Starlette(
        routes=[
            Route("/api/reservations/{id}/settle", settle, methods=["POST"]),
            Route("/api/reservations", settle, methods=["POST"]),
        ]
    )


def test_a_settle_outlasts_a_server_restart() -> None:
    """Background settles gave up after 3 retries (3.5 s): a server restarting for longer
    turned an answered call into its estimate, charged at its reservation's expiry (334 times
    its cost in a bug hunt). They are now tried for about 2.5 minutes."""
    down = {"error": {"code": "budget_unavailable", "message": "restarting", "details": None}}
    answers = [JSONResponse(down, 503, {"Retry-After": "0"}) for _ in range(6)]
    settled = {"reservationId": "rsv_" + "a" * 32, "status": "settled"}
    answers.append(JSONResponse({"data": settled}))
    with serving(_answering(answers)) as base, NullSpend("ns_live_sk_" + "1" * 32, base) as ns:
        ns.settle_later("rsv_" + "a" * 32, cost_microdollars=5)
        assert ns.flush(30)
    assert answers == []  # all seven answers taken: the seventh try landed


def test_an_answer_that_is_not_nullspends_is_no_answer() -> None:
    """A 200 that is not JSON (a proxy's page in front of the server) raised a raw
    JSONDecodeError; through a tracked client, an error its SDK retried as a lost connection."""
    page = Response("<html>maintenance</html>", 200, media_type="text/html")
    with (
        serving(_answering([page])) as base,
        NullSpend("ns_live_sk_" + "1" * 32, base, max_retries=0) as ns,
        pytest.raises(ConnectionFailedError, match="not NullSpend's answer"),
    ):
        ns.reserve(10)


def test_work_sent_on_the_callers_thread_is_tried_as_the_callers_own() -> None:
    """Background work is tried for minutes (a server's restart); sent on the caller's thread
    (the queue full), it was too: a sync caller stalled 146 s on a server that was down. The
    caller's thread runs the caller's own, shorter, version."""
    gate = threading.Event()
    ran: list[str] = []
    queue = Background(max_queue=1)
    queue.submit(lambda: gate.wait(10), "holding the thread")
    queue.submit(lambda: ran.append("queued"), "filling the queue")
    queue.submit(lambda: ran.append("background"), "settling", inline=lambda: ran.append("inline"))
    assert ran == ["inline"]
    gate.set()
    assert queue.flush(10)
    assert ran == ["inline", "queued"]
