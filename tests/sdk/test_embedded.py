"""Embedded mode: ``LocalNullSpend`` enforces budgets declared in code, in-process, with the
same typed denials, for tracked provider clients and the LangChain handler alike; spend kept in
memory or, given a path, in a SQLite file that outlives the process."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from functools import partial
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest
from langchain_openai import ChatOpenAI

from nullspend import embedded
from nullspend.client import CostReporter, NewCostEvent, NullSpend
from nullspend.client.models import MAX_BATCH, CostEvent
from nullspend.embedded import AsyncLocalNullSpend, LocalBudget, LocalNullSpend
from nullspend.errors import (
    BudgetExceededError,
    ConflictError,
    CustomerBudgetExceededError,
    NotFoundError,
    SessionLimitExceededError,
    TagBudgetExceededError,
    ValidationError,
)
from nullspend.policy.budgets import admits
from nullspend.pricing import (
    default_catalog,
    estimate_request,
    estimate_request_body,
    price_usage,
)
from nullspend.usage import Usage
from nullspend.wire import ANTHROPIC_MESSAGES, OPENAI_CHAT
from nullspend_langchain import NullSpendCallbackHandler
from tests.nullspend_server.conftest import RunningServer
from tests.sdk.test_tracked_openai import COST, MESSAGES, USAGE, client_kwargs


def estimate(**body: Any) -> int:
    """What the tracked client reserves for a gpt-4o-mini call with this body (to within a few
    bytes of JSON: caps below leave half a call's cost of margin)."""
    request = {"model": "gpt-4o-mini", "messages": MESSAGES, **body}
    return estimate_request(OPENAI_CHAT, request, json.dumps(request).encode()).microdollars


def cap_for(calls: int, **body: Any) -> int:
    """A cap that admits ``calls`` such calls and denies the next: each reserves the estimate
    and spends COST."""
    return estimate(**body) + (calls - 1) * COST + COST // 2


def test_a_hard_cap_in_one_line(fake: tuple[str, Any]) -> None:
    ns = LocalNullSpend([LocalBudget.total(cap_for(3, max_tokens=100))])
    client = ns.openai(**client_kwargs(fake))
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (3 * COST, 0)
    with pytest.raises(BudgetExceededError):  # the estimate no longer fits
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    assert len(fake[1].state.requests) == 3
    events = ns.cost_events().data
    assert [e.cost_microdollars for e in events] == [COST] * 3
    assert all(e.source == "embedded" and e.provider == "openai" for e in events)


def test_the_cap_holds_under_concurrency() -> None:
    ns = LocalNullSpend([LocalBudget.total(10_000)])
    admitted: list[str] = []
    denied: list[Exception] = []

    def call() -> None:
        try:
            admitted.append(ns.reserve(1_000).reservation_id)
        except BudgetExceededError as error:
            denied.append(error)

    threads = [threading.Thread(target=call) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(admitted), len(denied)) == (10, 22)
    for reservation_id in admitted:
        ns.settle(reservation_id, cost_microdollars=1_000)
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.remaining_microdollars) == (10_000, 0)


def test_customer_tag_and_session_budgets() -> None:
    ns = LocalNullSpend(
        [
            LocalBudget.total(10**9, session_limit_microdollars=5_000),
            LocalBudget.customer("acme", 2_000),
            LocalBudget.tag("team", "ml", 3_000),
        ]
    )
    with pytest.raises(CustomerBudgetExceededError) as customer:
        ns.reserve(2_500, customer="acme")
    assert customer.value.details["customer_id"] == "acme"
    ns.reserve(2_500, customer="other")  # not acme's budget
    with pytest.raises(TagBudgetExceededError):
        ns.reserve(3_500, tags={"team": "ml"})
    ns.reserve(4_000, session_id="s-1")
    with pytest.raises(SessionLimitExceededError):
        ns.reserve(2_000, session_id="s-1")


def with_a_total(server: RunningServer, limit: int, **settings: Any) -> NullSpend:
    """A client of ``server``, whose organization has a total budget of ``limit``."""
    budget = {"entityType": "user", "limitMicrodollars": limit, "resetInterval": "none"}
    with server.client() as admin:
        response = admin.post("/api/budgets", json={**budget, **settings})
        assert response.status_code == 201, response.text
    return NullSpend(server.admin_key, server.base_url)


def test_a_session_denial_reports_the_session_spend_as_the_server_does(
    server: RunningServer,
) -> None:
    """Embedded reported the session's spend and what it held reserved as its spend; the
    server reports the spend (its limit still counts both)."""
    remote = with_a_total(server, 10**9, sessionLimitMicrodollars=5_000)
    local = LocalNullSpend([LocalBudget.total(10**9, session_limit_microdollars=5_000)])
    for ns in (remote, local):
        ns.settle(ns.reserve_id(2_000, session_id="s-1"), cost_microdollars=1_000)
        ns.reserve_id(3_000, session_id="s-1")  # held: 1,000 + 3,000 of 5,000
        with pytest.raises(SessionLimitExceededError) as denied:
            ns.reserve_id(1_001, session_id="s-1")
        assert denied.value.details == {
            "session_id": "s-1",
            "session_spend_microdollars": 1_000,
            "session_limit_microdollars": 5_000,
        }
        ns.reserve_id(1_000, session_id="s-1")  # exactly the limit


def test_sessions_are_kept_only_when_a_budget_limits_them(tmp_path: Path) -> None:
    """Every distinct session id stayed in the engine for its life, limited or not: 200,000
    sessions grew a process by 24 MB."""
    path = tmp_path / "spend.db"
    ns = LocalNullSpend([LocalBudget.total(10**9)], path=path)
    for i in range(100):
        ns.settle(ns.reserve_id(10, session_id=f"run-{i}"), cost_microdollars=1)
    ns.report(NewCostEvent(provider="openai", model="x", cost_microdollars=1, session_id="r"))
    assert ns._sessions == {}
    ns.close()
    limited = LocalNullSpend([LocalBudget.total(10**9, session_limit_microdollars=150)], path=path)
    assert len(limited._sessions) == 101  # the file's spend, counted against the limit
    with pytest.raises(SessionLimitExceededError):
        limited.reserve_id(150, session_id="run-0")


def test_spend_outlives_the_process_in_a_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    first = LocalNullSpend([LocalBudget.total(5_000)], path=path)
    every_count = Usage(1, 2, 3, 4, 8, 6, 7, 5, 9)  # each count its own: none lost or swapped
    first.settle(
        first.reserve(1_000, customer="acme").reservation_id,
        cost_microdollars=4_000,
        usage=every_count,
        duration_ms=12,
        event_type="llm",
        trace_id="t-1",
    )
    written = first.cost_events().data
    first.close()
    again = LocalNullSpend([LocalBudget.total(5_000)], path=path)
    (status,) = again.budget_status()
    assert status.spend_microdollars == 4_000
    with pytest.raises(BudgetExceededError):
        again.reserve(2_000)
    # The event as the next process reads it is the event as it was written, to the microsecond.
    assert again.cost_events(customer="acme").data == written
    (event,) = again.cost_events().data
    assert (event.cached_input_tokens, event.web_search_requests) == (2, 9)
    assert (event.duration_ms, event.event_type, event.trace_id) == (12, "llm", "t-1")


# Opens the file in a process of its own, spends 1,000 and prints the spend on file, then holds
# the file until its input ends (or it is killed); or prints the error that refused it.
_OPEN_ELSEWHERE = """
import sys
from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend.errors import ConflictError
try:
    ns = LocalNullSpend([LocalBudget.total(10_000)], path=sys.argv[1])
except ConflictError as error:
    print(f"ConflictError: {error}")
else:
    ns.settle(ns.reserve(1_000).reservation_id, cost_microdollars=1_000)
    print(ns.budget_status()[0].spend_microdollars, flush=True)
    sys.stdin.read()
"""


def open_elsewhere(path: Path, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _OPEN_ELSEWHERE, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        **{"stdin": subprocess.DEVNULL, **popen},
    )


def _peak_bytes_opening(path: Path, doublings: int) -> int:
    """The most memory opening ``path`` took, with 100 events reported to it and then copied
    (each with an id of its own) until there are 100 * 2**doublings."""
    with LocalNullSpend(path=path) as ns:
        first = ns.report_batch([REPORTED] * 100, idempotency_key="first")
    with sqlite3.connect(path) as connection:
        for copy in range(doublings):
            connection.execute(
                "INSERT INTO cost_events (body) SELECT json_set(body, '$.id', ? || seq)"
                " FROM cost_events",
                (f"ce_copy{copy}_",),
            )
    tracemalloc.start()
    try:
        opened = LocalNullSpend([LocalBudget.total(10**12)], path=path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (status,) = opened.budget_status()
    assert status.spend_microdollars == 100 * 2**doublings * first_cost(opened)
    # The first events are long gone from those kept, not from what their key recorded.
    assert opened.report_batch([REPORTED] * 100, idempotency_key="first") == first
    opened.close()
    return peak


def first_cost(ns: LocalNullSpend) -> int:
    return ns.cost_events(limit=1).data[0].cost_microdollars


def test_opening_a_file_holds_its_events_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opening the file read every event on it into one list: a file of a million events took
    650 MB of memory to open (in a bug hunt; 59 MB one at a time). What opening holds is what
    the engine keeps (the latest events, what report keys recorded), whatever the file's size
    (past pydantic's cache of the strings it parsed, bounded too)."""
    monkeypatch.setattr(embedded, "EVENTS_KEPT", 100)
    smaller = _peak_bytes_opening(tmp_path / "smaller.db", 8)  # 25,600 events
    bigger = _peak_bytes_opening(tmp_path / "bigger.db", 9)  # 51,200
    assert bigger < 1.5 * smaller  # not twice as much


def test_a_file_in_use_is_refused_to_another_process_until_closed(tmp_path: Path) -> None:
    """Each process would enforce the whole cap with its own copy of the spend (two made 20,000
    of a 10,000 cap): the second is refused, clearly, until the first closes."""
    path = tmp_path / "spend.db"
    first = LocalNullSpend([LocalBudget.total(10_000)], path=path)
    first.settle(first.reserve(1_000).reservation_id, cost_microdollars=1_000)
    refused, _ = open_elsewhere(path).communicate(timeout=60)
    assert refused.startswith(f"ConflictError: {path} is in use by another LocalNullSpend")
    assert "one process's spend" in refused
    assert "NullSpend server shares budgets across processes" in refused
    first.close()
    counted, _ = open_elsewhere(path).communicate(timeout=60)
    assert counted == "2000\n"  # the first's 1,000, and its own


def test_a_file_is_free_once_the_process_holding_it_dies(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    holder = open_elsewhere(path, stdin=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "1000\n"
        with pytest.raises(ConflictError, match="in use by another LocalNullSpend"):
            LocalNullSpend(path=path)
    finally:
        holder.kill()  # dies holding the file, never closed: the kernel drops its lock
        holder.communicate()
    (status,) = LocalNullSpend([LocalBudget.total(10_000)], path=path).budget_status()
    assert status.spend_microdollars == 1_000


def test_what_is_still_reserved_when_the_file_is_let_go_is_charged_its_estimate(
    tmp_path: Path,
) -> None:
    """A script that ends with a call in flight (a stream half read) left nothing on file: the
    reservation lived in memory only, and the provider had billed the call. At close, and at
    exit, what is still held is charged its estimate, as an expired reservation is."""
    path = tmp_path / "spend.db"
    ns = LocalNullSpend([LocalBudget.total(10_000)], path=path)
    in_flight = ns.reserve(1_000, customer="acme").reservation_id
    ns.settle(ns.reserve(2_000).reservation_id, cost_microdollars=300)
    ns.close()
    with pytest.raises(ConflictError):  # the call's end, heard too late: the file is let go
        ns.settle(in_flight, cost_microdollars=900)
    script = (
        "import sys\n"
        "from nullspend.embedded import LocalBudget, LocalNullSpend\n"
        "ns = LocalNullSpend([LocalBudget.total(10_000)], path=sys.argv[1])\n"
        "ns.reserve(2_500)\n"  # and the script ends
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)
    again = LocalNullSpend([LocalBudget.total(10_000)], path=path)
    assert again.budget_status()[0].spend_microdollars == 300 + 1_000 + 2_500
    charged = [e for e in again.cost_events().data if e.tags.get("_ns_expired") == "true"]
    assert sorted((e.cost_microdollars, e.customer) for e in charged) == [
        (1_000, "acme"),
        (2_500, None),
    ]
    # A notebook cell run again: the newer engine takes the file, and what the older one held
    # is charged first, so the newer one counts it.
    again.customer("acme").reserve(400)  # through a twin: they share what they hold
    newer = LocalNullSpend([LocalBudget.total(10_000)], path=path)
    assert newer.budget_status()[0].spend_microdollars == 3_800 + 400
    # Dropped, not closed: nothing keeps the engine (and its lock on the file) for the
    # collector, so another process opens the file at once.
    del again, newer
    elsewhere = open_elsewhere(path)
    assert elsewhere.communicate(timeout=60)[0] == f"{3_800 + 400 + 1_000}\n"


def test_the_same_process_opens_the_file_again(tmp_path: Path) -> None:
    """In one process the newest engine on a file has it: a notebook cell run again builds
    the new engine while its name still holds the old one, which then refuses calls (two
    engines counting one file's spend apart would each enforce the cap). Closed, an engine
    refuses calls too, and the file opens again with the spend on it."""
    path = tmp_path / "spend.db"
    budgets = [LocalBudget.total(10_000)]
    first = LocalNullSpend(budgets, path=path)
    first.settle(first.reserve(1_000).reservation_id, cost_microdollars=1_000)
    rerun = LocalNullSpend(budgets, path=path)  # the cell run again
    with pytest.raises(ConflictError, match="newer LocalNullSpend"):
        first.reserve(1_000)
    assert rerun.budget_status()[0].spend_microdollars == 1_000
    rerun.close()
    with pytest.raises(ConflictError, match="closed"):  # the file may be another engine's now
        rerun.reserve(1_000)
    first.close()  # closing a superseded engine frees nothing twice
    with LocalNullSpend(budgets, path=path) as again:
        assert again.budget_status()[0].spend_microdollars == 1_000
    twin = LocalNullSpend(budgets, path=path).customer("acme")  # shares the engine's hold
    del twin  # the engine collected: the file is free

    async def twice() -> None:
        for _ in range(2):
            async with AsyncLocalNullSpend(budgets, path=path) as engine:
                assert (await engine.budget_status())[0].spend_microdollars == 1_000

    asyncio.run(twice())


def _in_a_forked_child(
    inherited: list[LocalNullSpend], path: Path, answers: Queue[list[str]], done: Event
) -> None:
    outcomes: list[str] = []
    for call in [*(ns.reserve for ns in inherited), lambda _: LocalNullSpend(path=path)]:
        try:
            call(1_000)
            outcomes.append("admitted")
        except ConflictError as error:
            outcomes.append(str(error))
    answers.put(outcomes)
    done.wait(60)


def test_a_forked_child_cannot_use_the_parents_engine(tmp_path: Path) -> None:
    """A child's copy of the spend would be a second cap beside the parent's: its calls are
    refused, with a file or not, and it does not keep the parent's file from the next engine."""
    path = tmp_path / "spend.db"
    on_file, in_memory = LocalNullSpend(path=path), LocalNullSpend()
    fork = multiprocessing.get_context("fork")
    answers: Queue[list[str]] = fork.Queue()
    done = fork.Event()
    child = fork.Process(
        target=_in_a_forked_child, args=([on_file, in_memory], path, answers, done)
    )
    child.start()
    try:
        *inherited, opened = answers.get(timeout=60)
        refusal = f"this LocalNullSpend belongs to process {os.getpid()}, not to this forked child"
        assert [answer.partition(":")[0] for answer in inherited] == [refusal] * 2
        assert all("NullSpend server shares budgets" in answer for answer in inherited)
        assert "in use by another LocalNullSpend" in opened  # the parent's still
        on_file.settle(on_file.reserve(1_000).reservation_id, cost_microdollars=1_000)
        on_file.close()
        (status,) = LocalNullSpend([LocalBudget.total(10_000)], path=path).budget_status()
        assert status.spend_microdollars == 1_000  # though the child lives on
    finally:
        done.set()
        child.join(60)
    assert child.exitcode == 0


def test_a_child_forked_while_a_call_held_the_engine_is_refused_not_hung(
    tmp_path: Path,
) -> None:
    """A parent's thread in the middle of a call holds the engine's lock at the fork: the
    child's copy of the lock stayed taken, and the child hung in its first call (20 of 20
    children in a bug hunt's run) instead of hearing the refusal."""
    path = tmp_path / "spend.db"
    engines = [LocalNullSpend(path=path), LocalNullSpend()]
    fork = multiprocessing.get_context("fork")
    answers: Queue[list[str]] = fork.Queue()
    done = fork.Event()
    for engine in engines:
        engine._lock.acquire()  # as a thread mid-call would
    try:
        child = fork.Process(target=_in_a_forked_child, args=(engines, path, answers, done))
        child.start()
    finally:
        for engine in engines:
            engine._lock.release()
    try:
        *inherited, _ = answers.get(timeout=30)
        assert all("not to this forked child" in answer for answer in inherited)
    finally:
        done.set()
        child.join(60)
        if child.exitcode is None:
            child.kill()


def _open_in_another_process(path: Path, answers: Queue[str]) -> None:
    try:
        LocalNullSpend(path=path)
        answers.put("opened")
    except ConflictError as error:
        answers.put(str(error))


def test_a_file_reached_through_a_symbolic_link_is_still_one_process(tmp_path: Path) -> None:
    """The lock was named after the path as given: a process opening ``link.db`` (a symbolic
    link to ``spend.db``) took ``link.db.lock``, and two processes each spent the whole cap
    on one file."""
    path = tmp_path / "spend.db"
    link = tmp_path / "link.db"
    link.symlink_to(path)
    engine = LocalNullSpend(path=path)
    spawn = multiprocessing.get_context("spawn")
    answers: Queue[str] = spawn.Queue()
    other = spawn.Process(target=_open_in_another_process, args=(link, answers))
    other.start()
    try:
        assert "in use by another LocalNullSpend" in answers.get(timeout=60)
    finally:
        other.join(60)
        engine.close()


def test_text_the_file_cannot_hold_is_refused_before_the_call(tmp_path: Path) -> None:
    """A lone surrogate (what ``os.fsdecode`` makes of a filename that is not UTF-8) in a
    session id was taken at reserve: the call was served, its settle could not be written,
    nothing was billed, and the expiry's failure surfaced in unrelated calls. Refused at
    once, as the server refuses it."""
    ns = LocalNullSpend([LocalBudget.total(10_000)], path=tmp_path / "spend.db")
    for options, refusal in (
        ({"session_id": "run-\udcff.log"}, "no NUL or lone surrogate"),
        ({"customer": "a\x00b"}, "customer id must be"),
        ({"model": "m\ud800"}, "no NUL or lone surrogate"),
    ):
        with pytest.raises(ValidationError, match=refusal):
            ns.reserve_id(100, **options)  # type: ignore[arg-type]
    event = NewCostEvent(provider="openai", model="gpt-4o-mini", trace_id="t\ud800")
    with pytest.raises(ValidationError, match="trace_id"):
        ns.report(event)
    ns.settle(ns.reserve_id(100, session_id="run-1"), cost_microdollars=60)
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (60, 0)


def test_closing_a_scoped_copy_leaves_its_original_open(tmp_path: Path) -> None:
    """``with ns.customer("acme") as c:`` closed the file the copy shares with its original:
    the original then refused every call, and what it held was charged its estimate."""
    ns = LocalNullSpend([LocalBudget.total(10_000)], path=tmp_path / "spend.db")
    held = ns.reserve_id(1_000)
    with ns.customer("acme") as acme:
        acme.settle(acme.reserve_id(100), cost_microdollars=100)
    ns.settle(held, cost_microdollars=300)  # still open
    assert ns.budget_status()[0].spend_microdollars == 400

    async def scoped_async() -> int:
        engine = AsyncLocalNullSpend([LocalBudget.total(10_000)], path=tmp_path / "async.db")
        async with engine.customer("acme") as acme:
            await acme.settle(await acme.reserve_id(100), cost_microdollars=100)
        return (await engine.budget_status())[0].spend_microdollars

    ns.close()
    assert asyncio.run(scoped_async()) == 100


def test_a_budget_declared_wrong_is_refused_not_left_unenforced() -> None:
    """A policy misspelt (``"strict"``) enforced nothing: the check admitted any policy it did
    not know, and 50 of 50 calls went through a cap that fit 10."""
    with pytest.raises(ValueError, match="policy must be one of"):
        LocalBudget.total(100, policy="strict")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="entity_type"):
        LocalBudget(100, "team", "x")  # type: ignore[arg-type]
    for limit in (-1, 1.5, "100", True):
        with pytest.raises(ValueError, match="limit_microdollars"):
            LocalBudget.total(limit)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="session_limit_microdollars must be positive"):
        LocalBudget.total(100, session_limit_microdollars=0)
    # An entity no call can carry (the server refuses such a budget) would cap nothing.
    for customer in ("acme corp", "ünïcode", "", "c" * 257):
        with pytest.raises(ValueError, match="customer id must be"):
            LocalBudget.customer(customer, 100)
    with pytest.raises(ValueError, match="key=value"):
        LocalBudget(100, "tag", "team")
    for key, value in (("_ns_estimated", "true"), ("a team", "ml"), ("team", "v" * 257)):
        with pytest.raises(ValueError, match="tag"):
            LocalBudget.tag(key, value, 100)
    with pytest.raises(ValueError, match="unknown budget policy"):
        admits("strict", 100, 0, 0, 1)


# What the server refuses with a ValidationError, and the most it takes of each text.
REFUSED_AT_RESERVE: list[dict[str, Any]] = [
    {"customer": "acme corp"},
    {"customer": "ünïcode"},
    {"customer": "c" * 257},
    {"customer": ""},
    {"session_id": ""},
    {"session_id": "s" * 257},
    {"model": ""},
    {"model": "m" * 257},
    {"provider": "p" * 65},
    {"trace_id": "t" * 65},
]
REFUSED_AT_SETTLE: list[dict[str, Any]] = [
    {"model": "m" * 257},
    {"provider": "p" * 65},
    {"service_tier": "t" * 33},
    {"event_type": "e" * 65},
    {"trace_id": "t" * 65},
]
REFUSED_AT_REPORT: list[dict[str, Any]] = [
    {"customer": "acme corp"},
    {"customer": ""},
    {"session_id": ""},
    {"session_id": "s" * 257},
    {"model": "m" * 257},
    {"provider": ""},
    {"provider": "p" * 65},
    {"service_tier": "t" * 33},
    {"trace_id": "t" * 65},
    {"event_type": "e" * 65},
    {"action_id": "a" * 65},
    {"duration_ms": -1},
    {"duration_ms": 2**31},
]
AT_THE_MOST = {
    "customer": "c" * 256,
    "session_id": "s" * 256,
    "model": "m" * 256,
    "provider": "p" * 64,
    "trace_id": "t" * 64,
}


def test_embedded_refuses_what_the_server_refuses(server: RunningServer) -> None:
    """Embedded took a customer id with a space, a 257-character session id, a 65-character
    trace id, a negative duration: texts the server refuses, kept and written to the file."""
    for ns in (NullSpend(server.admin_key, server.base_url), LocalNullSpend()):
        for options in REFUSED_AT_RESERVE:
            with pytest.raises(ValidationError):
                ns.reserve(1_000, **options)
        held = ns.reserve_id(1_000)
        for options in REFUSED_AT_SETTLE:
            with pytest.raises(ValidationError):
                ns.settle(held, cost_microdollars=1, **options)
        for fields in REFUSED_AT_REPORT:
            with pytest.raises(ValidationError):
                ns.report(NewCostEvent(**{"provider": "openai", "model": "x", **fields}))
        ns.settle(held, cost_microdollars=1, service_tier="t" * 32, event_type="e" * 64)
        ns.settle(ns.reserve_id(1_000, **AT_THE_MOST), cost_microdollars=1)
        event = NewCostEvent(cost_microdollars=1, action_id="a" * 64, **AT_THE_MOST)
        ns.report(event)
        assert len(ns.cost_events().data) == 3


def test_a_released_reservation_id_is_finished_as_on_the_server(server: RunningServer) -> None:
    """Embedded reserved a released id again (its estimate held a second time), and a settle
    after the release answered NotFound where the server says it is already released."""
    for ns in (with_a_total(server, 10**9), LocalNullSpend([LocalBudget.total(10**9)])):
        chosen = "rsv_a1b2c3d4e5f6a7b8c9"
        ns.reserve(1_000, reservation_id=chosen)
        ns.release(chosen)
        for finish in (partial(ns.settle, cost_microdollars=1), ns.release, ns.extend):
            with pytest.raises(ConflictError) as finished:
                finish(chosen)
            assert finished.value.details == {"reservationId": chosen, "status": "released"}
        with pytest.raises(ConflictError) as taken:
            ns.reserve(1_000, reservation_id=chosen)
        assert taken.value.details == {"reservationId": chosen}
        assert ns.budget_status()[0].reserved_microdollars == 0


def test_another_request_under_a_held_reservation_id_is_refused(server: RunningServer) -> None:
    """Sent again under its id, a reserve is answered the reservation it made; another request
    under the id (a $5 estimate where $0.04 was held, another customer) was answered it too,
    never checked against a budget: past the cap. Refused, as the server refuses it."""
    for ns in (with_a_total(server, 1_000_000), LocalNullSpend([LocalBudget.total(1_000_000)])):
        chosen = "rsv_" + "c" * 32
        assert ns.reserve(40_000, reservation_id=chosen, customer="acme").reservation_id == chosen
        assert ns.reserve(40_000, reservation_id=chosen, customer="acme").reservation_id == chosen
        for other in ({"customer": "acme", "tags": {"team": "ml"}}, {"customer": "other"}):
            with pytest.raises(ConflictError):
                ns.reserve(40_000, reservation_id=chosen, **other)
        with pytest.raises(ConflictError):
            ns.reserve(5_000_000, reservation_id=chosen, customer="acme")
        assert ns.budget_status()[0].reserved_microdollars == 40_000


def test_a_call_named_only_by_its_model_is_recorded_under_its_provider(
    server: RunningServer,
) -> None:
    """A reserve and settle that name the model but no provider were recorded as provider
    "unknown", which a provider filter misses; the catalog knows whose model it is."""
    for ns in (with_a_total(server, 10**9), LocalNullSpend([LocalBudget.total(10**9)])):
        held = ns.reserve_id(1_000, model="gpt-4o-mini")
        ns.settle(held, usage=Usage(input_tokens=10, output_tokens=5), model="gpt-4o-mini")
        unpriced = ns.reserve_id(1_000, model="acme-private-1")
        ns.settle(unpriced, cost_microdollars=3)
        assert [e.provider for e in ns.cost_events(provider="openai").data] == ["openai"]
        assert [e.provider for e in ns.cost_events().data] == ["unknown", "openai"]


def test_the_released_ids_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "EVENTS_KEPT", 3)
    ns = LocalNullSpend()
    ids = [ns.reserve_id(1) for _ in range(4)]
    for reservation_id in ids:
        ns.release(reservation_id)
    assert list(ns._released) == ids[1:]


def test_a_page_of_events_is_1_to_200_as_on_the_server(server: RunningServer) -> None:
    """``cost_events(limit=0)`` raised IndexError embedded; the server answers 400."""
    for ns in (NullSpend(server.admin_key, server.base_url), LocalNullSpend()):
        ns.report(NewCostEvent(provider="openai", model="x", cost_microdollars=5))
        for limit in (0, -1, 201):
            with pytest.raises(ValidationError):
                ns.cost_events(limit=limit)
        assert len(ns.cost_events(limit=200).data) == 1


def test_a_cursor_is_a_position_in_the_events_whatever_the_filters(
    server: RunningServer,
) -> None:
    """Embedded looked the cursor up among the events the filters matched: the cursor of an
    unfiltered page, used with a filter its event did not match, answered an empty page where
    the server answers the older events that match."""
    run = {"run": uuid.uuid4().hex}
    for ns in (NullSpend(server.admin_key, server.base_url), LocalNullSpend()):
        for cost, customer in enumerate(["a", "b", "a", "b"], start=1):
            ns.report(
                NewCostEvent(
                    provider="openai",
                    model="x",
                    cost_microdollars=cost,
                    customer=customer,
                    tags=run,
                )
            )
        first = ns.cost_events(limit=1, tags=run)
        assert [e.cost_microdollars for e in first.data] == [4]
        older = ns.cost_events(cursor=first.cursor, customer="a", tags=run)
        assert [e.cost_microdollars for e in older.data] == [3, 1]


def test_a_page_reads_only_its_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every event kept was made a CostEvent for each page: with 10,000 kept, a page of one
    took 230 ms and reading all of them in pages of 200 took 13 s, in a bug hunt."""
    ns = LocalNullSpend()
    for _ in range(10):
        ns.report_batch([NewCostEvent(provider="openai", model="x", cost_microdollars=5)] * 100)
    reads: list[str] = []
    read = embedded._Event.read

    def counted(event: Any) -> CostEvent:
        reads.append(event.id)
        return read(event)

    monkeypatch.setattr(embedded._Event, "read", counted)
    page = ns.cost_events(limit=2)
    assert len(reads) == 2
    assert len(ns.cost_events(limit=3, cursor=page.cursor).data) == 3
    assert len(reads) == 5


def test_reserve_id_is_reserve_answered_with_the_id() -> None:
    ns = LocalNullSpend([LocalBudget.total(5_000)])
    held = ns.reserve_id(3_000, customer="acme", trace_id="t-1")
    with pytest.raises(BudgetExceededError):
        ns.reserve_id(2_001)
    ns.settle(held, cost_microdollars=2_500)
    (event,) = ns.cost_events().data
    assert (event.reservation_id, event.customer, event.trace_id) == (held, "acme", "t-1")
    with pytest.raises(ValidationError):
        ns.reserve_id(None)


def test_the_langchain_handler_runs_embedded_without_a_server(
    fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NULLSPEND_BASE_URL", raising=False)
    monkeypatch.delenv("NULLSPEND_API_KEY", raising=False)
    handler = NullSpendCallbackHandler(budgets=[LocalBudget.total(cap_for(1, max_tokens=100))])
    assert isinstance(handler.client, LocalNullSpend)
    model = ChatOpenAI(
        model="gpt-4o-mini",
        base_url=f"{fake[0]}/v1",
        api_key="sk-test",  # type: ignore[arg-type]
        max_retries=0,
        max_tokens=100,
        default_headers={"x-fake-usage": json.dumps(USAGE)},
        callbacks=[handler],
    )
    model.invoke("Hello")
    assert handler.client.cost_events().data[0].cost_microdollars == COST
    with pytest.raises(BudgetExceededError):
        model.invoke("Hello")
    assert len(fake[1].state.requests) == 1


def test_async_embedded(fake: tuple[str, Any]) -> None:
    async def run() -> None:
        cap = cap_for(2, max_tokens=100)
        ns = AsyncLocalNullSpend([LocalBudget.customer("acme", cap)])
        client = ns.customer("acme").openai(**client_kwargs(fake))
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=100
        )
        async for _ in stream:
            pass
        with pytest.raises(CustomerBudgetExceededError):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, max_tokens=100
            )
        (status,) = await ns.budget_status()
        assert status.spend_microdollars == 2 * COST

    asyncio.run(run())


def test_a_settle_the_file_refuses_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = LocalNullSpend([LocalBudget.total(5_000)], path=tmp_path / "spend.db")
    reservation = ns.reserve(1_000)
    assert ns._store is not None

    def refuse(event: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(ns._store, "add", refuse)
    with pytest.raises(sqlite3.OperationalError):
        ns.settle(reservation.reservation_id, cost_microdollars=700)
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (0, 1_000)  # as before
    monkeypatch.undo()
    ns.settle(reservation.reservation_id, cost_microdollars=700)
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (700, 0)


@pytest.mark.parametrize(
    "made_by",
    [
        "CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)",  # an application's
        "CREATE TABLE cost_events (id TEXT PRIMARY KEY, cost_microdollars INTEGER)",  # a server's
    ],
)
def test_another_programs_file_is_refused_and_left_as_it_was(tmp_path: Path, made_by: str) -> None:
    """A mistyped path (an application's database, the server's) was taken over: switched to
    WAL and given the engine's tables, the server's then failing with "no such column: body"."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as connection:
        connection.execute(made_by)
    connection.close()
    before = path.read_bytes()
    for _ in range(2):  # and the refusal lets the file's lock go
        with pytest.raises(ValueError, match="is not a LocalNullSpend spend file"):
            LocalNullSpend(path=path)
    assert path.read_bytes() == before
    path.write_bytes(b"not SQLite at all")
    with pytest.raises(ValueError, match=r"is not a LocalNullSpend spend file \(file is not"):
        LocalNullSpend(path=path)


def test_a_file_that_cannot_be_written_is_refused_when_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only file opened, and every settle then failed: in a bug hunt 3 calls were
    admitted and served, none recorded, their 9,000 of a 10,000 cap held for good."""
    path = tmp_path / "spend.db"
    LocalNullSpend(path=path).close()
    connect = sqlite3.connect

    def read_only(database: Path, **options: Any) -> sqlite3.Connection:
        # As SQLite opens a file the process may not write (root may write a 0444 file).
        return connect(f"{database.as_uri()}?mode=ro", uri=True, **options)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    with pytest.raises(PermissionError, match="the spend file cannot be written"):
        LocalNullSpend([LocalBudget.total(10_000)], path=path)
    monkeypatch.undo()
    LocalNullSpend(path=path).close()  # the refusal let go of the file


@pytest.mark.parametrize(
    "options",
    [
        {"cost_microdollars": 2.5},  # a cost computed as tokens * price
        {"cost_microdollars": -5_000_000},  # a refund would reopen the cap
        {"cost_microdollars": "700"},
        {"cost_microdollars": True},
        {"cost_microdollars": 2**63},
        {"cost_microdollars": 10**15 + 1},  # past one call's most, as the server refuses it
        {"cost_microdollars": 700, "duration_ms": 1.5},
        {"cost_microdollars": 700, "duration_ms": 2**31},
        {"cost_microdollars": 700, "model": 4},
        {"usage": {"input_tokens": 10}},
    ],
)
def test_a_settle_the_server_would_refuse_is_refused_and_changes_nothing(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """The server answers such a settle 400 and records nothing. Embedded, a decimal cost was
    written to the file and then broke every read of it, this engine's and the next one's; a
    negative one lowered the spend."""
    path = tmp_path / "spend.db"
    ns = LocalNullSpend([LocalBudget.total(5_000)], path=path)
    reservation = ns.reserve(1_000)
    with pytest.raises(ValidationError):
        ns.settle(reservation.reservation_id, **options)
    with pytest.raises(ValidationError):
        ns.reserve(2.5)  # nor an estimate
    with pytest.raises(ValidationError):
        ns.reserve(10**15 + 1)
    with pytest.raises(ValidationError):
        ns.reserve(100, model=123)  # nor what a reservation keeps for its settle  # type: ignore[typeddict-item]
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (0, 1_000)
    ns.settle(reservation.reservation_id, cost_microdollars=700)
    ns.close()
    again = LocalNullSpend([LocalBudget.total(5_000)], path=path)
    assert [e.cost_microdollars for e in again.cost_events().data] == [700]


def test_a_reservation_nobody_settles_is_charged_its_estimate_when_it_expires(
    tmp_path: Path,
) -> None:
    """As the server does: a call whose end was never heard (a lost callback, a dropped stream)
    is charged at its estimate and recorded, tagged, once its reservation's lifetime is over."""
    path = tmp_path / "spend.db"
    ns = LocalNullSpend([LocalBudget.total(10_000)], path=path, reservation_ttl=dt.timedelta(0))
    leaked = ns.reserve(3_000, customer="acme", session_id="s-1", tags={"team": "ml"})
    assert leaked.expires_at <= dt.datetime.now(dt.UTC)
    (status,) = ns.budget_status()  # a read settles what is due first
    assert (status.spend_microdollars, status.reserved_microdollars) == (3_000, 0)
    (event,) = ns.cost_events().data
    assert (event.reservation_id, event.cost_microdollars) == (leaked.reservation_id, 3_000)
    assert (event.customer, event.session_id) == ("acme", "s-1")
    assert event.tags == {
        "team": "ml",
        "customer": "acme",
        "_ns_estimated": "true",
        "_ns_expired": "true",
    }
    with pytest.raises(ConflictError, match="already expired") as refused:
        ns.settle(leaked.reservation_id, cost_microdollars=1_000)
    assert refused.value.details["status"] == "expired"  # as the server says it
    ns.close()
    # Recorded in the file: the next process counts it.
    (again,) = LocalNullSpend([LocalBudget.total(10_000)], path=path).budget_status()
    assert again.spend_microdollars == 3_000


def test_only_reservations_past_their_lifetime_are_charged_their_estimate() -> None:
    ns = LocalNullSpend([LocalBudget.total(10_000)], reservation_ttl=dt.timedelta(0))
    first = ns.reserve(1_000)
    ns.settle(first.reservation_id, cost_microdollars=400)  # before any sweep: its own cost
    second = ns.reserve(2_000)
    with pytest.raises(BudgetExceededError):  # the sweep first charges `second` its 2,000
        ns.reserve(7_601)
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (2_400, 0)
    assert [e.reservation_id for e in ns.cost_events().data] == [
        second.reservation_id,
        first.reservation_id,
    ]
    kept = LocalNullSpend([LocalBudget.total(10_000)])  # an hour to live
    pending = kept.reserve(5_000)
    (status,) = kept.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (0, 5_000)
    kept.settle(pending.reservation_id, cost_microdollars=4_000)
    assert kept.cost_events().data[0].tags == {}


class _Clock:
    """The engine's clock, moved by the test: ``time`` with its own ``monotonic``."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_a_reservation_expires_on_time_whatever_came_and_went_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine sweeps only once the oldest reservation can be due: one settled early, or
    a sweep that found nothing due, must not make a later reservation expire late."""
    clock = _Clock()
    monkeypatch.setattr(embedded, "time", clock)
    ns = LocalNullSpend([LocalBudget.total(10_000)], reservation_ttl=dt.timedelta(seconds=10))
    early = ns.reserve_id(1_000)  # due at 1,010
    ns.settle(early, cost_microdollars=100)
    clock.now = 1_004.0
    later = ns.reserve_id(2_000)  # due at 1,014
    clock.now = 1_012.0  # past when `early` was due: a sweep finds nothing due
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (100, 2_000)
    clock.now = 1_014.0
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (2_100, 0)
    assert ns.cost_events().data[0].reservation_id == later


def test_an_expiry_the_file_refused_is_retried_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep was put off a whole lifetime before it charged anything: an expiry the file
    refused stood, its estimate held and uncharged, until then."""
    clock = _Clock()
    monkeypatch.setattr(embedded, "time", clock)
    ns = LocalNullSpend(
        [LocalBudget.total(10_000)],
        path=tmp_path / "spend.db",
        reservation_ttl=dt.timedelta(seconds=10),
    )
    ns.reserve_id(1_000)  # due at 1,010
    assert ns._store is not None
    written = ns._store.add

    def refuse(*events: object, **key: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    clock.now = 1_010.0
    ns._store.add = refuse  # type: ignore[method-assign]
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (0, 1_000)  # it stands
    ns._store.add = written  # type: ignore[method-assign]
    clock.now = 1_011.0
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (1_000, 0)


def test_an_extended_reservation_lives_a_full_lifetime_from_then(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a long stream sends while its chunks come: its reservation is due a full lifetime
    after the extension, and the ones taken after it still fall due on time before it."""
    clock = _Clock()
    monkeypatch.setattr(embedded, "time", clock)
    ns = LocalNullSpend([LocalBudget.total(10_000)], reservation_ttl=dt.timedelta(seconds=10))
    streaming = ns.reserve_id(1_000)  # due at 1,010
    clock.now = 1_005.0
    short = ns.reserve_id(2_000)  # due at 1,015
    clock.now = 1_008.0
    ns.extend(streaming)  # due at 1,018
    clock.now = 1_016.0
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (2_000, 1_000)
    assert [e.reservation_id for e in ns.cost_events().data] == [short]
    ns.settle(streaming, cost_microdollars=300)
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (2_300, 0)
    with pytest.raises(ConflictError) as finished:
        ns.extend(short)
    assert finished.value.details["status"] == "expired"
    with pytest.raises(NotFoundError):
        ns.extend("rsv_never_made")


# --- code written for NullSpend, run embedded ----------------------------------------------

REPORTED = NewCostEvent(
    provider="anthropic",
    model="claude-sonnet-4-5",
    input_tokens=1_000,
    cached_input_tokens=2_000,
    cache_write_5m_tokens=300,
    output_tokens=400,
    reasoning_tokens=100,
    customer="acme",
    session_id="s-1",
    trace_id="t-1",
    action_id="act-1",
    tags={"team": "ml"},
)


def reporting(ns: NullSpend | LocalNullSpend) -> list[CostEvent]:
    """What a script does with a server client: report, report a batch, flush, read, close."""
    with ns:
        one = ns.report(REPORTED, idempotency_key="call-1")
        assert ns.report(REPORTED, idempotency_key="call-1").id == one.id  # once per key
        batch = ns.report_batch(
            [REPORTED.model_copy(update={"customer": None}), REPORTED], idempotency_key="b-1"
        )
        assert batch.inserted == 2
        assert ns.flush() is True
        return ns.cost_events(limit=10).data


def test_reports_are_recorded_as_the_server_records_them(server: RunningServer) -> None:
    """The same code against a server and embedded: the same events, priced alike."""
    served = reporting(NullSpend(server.admin_key, server.base_url))
    local = reporting(LocalNullSpend())

    def fields(event: CostEvent) -> dict[str, Any]:
        return event.model_dump(exclude={"id", "created_at", "source", "api_key_id"})

    assert [fields(e) for e in local] == [fields(e) for e in served]
    assert (
        local[0].cost_microdollars
        == price_usage(
            Usage.of_event(REPORTED), default_catalog().resolve("claude-sonnet-4-5")
        ).total_microdollars
    )
    assert local[0].tags == {"customer": "acme", "team": "ml"}


def test_reported_spend_counts_against_the_budgets_it_falls_under() -> None:
    ns = LocalNullSpend(
        [
            LocalBudget.total(10_000),
            LocalBudget.customer("acme", 6_000),
            LocalBudget.tag("team", "ml", 8_000),
        ]
    )
    ns.report(NewCostEvent(provider="openai", model="x", cost_microdollars=5_000, customer="acme"))
    ns.report(
        NewCostEvent(provider="openai", model="x", cost_microdollars=2_500, tags={"team": "ml"})
    )
    spend = {s.entity_type: s.spend_microdollars for s in ns.budget_status()}
    assert spend == {"user": 7_500, "customer": 5_000, "tag": 2_500}
    with pytest.raises(CustomerBudgetExceededError):
        ns.reserve(1_500, customer="acme")
    with pytest.raises(BudgetExceededError):
        ns.reserve(3_000)
    # Never refused itself: the call already happened, past the cap or not.
    ns.report(NewCostEvent(provider="openai", model="x", cost_microdollars=9_000))
    assert ns.budget_status()[0].spend_microdollars == 16_500


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"model": "no-such-model"}, "not in the pricing catalog"),
        ({"tags": {"": "x"}}, "tag"),
        ({"output_tokens": 1, "reasoning_tokens": 2}, "reasoning"),
        ({"input_tokens": -1}, "negative"),
        ({"cost_microdollars": -1}, "negative"),
        ({"provider": ""}, "provider"),
    ],
)
def test_a_batch_with_one_bad_event_records_none(
    bad: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = tmp_path / "spend.db"
    ns = LocalNullSpend([LocalBudget.total(10**9)], path=path)
    good = NewCostEvent(provider="openai", model="gpt-4o-mini", input_tokens=1_000)
    with pytest.raises(ValidationError, match=message):
        ns.report_batch([good, good.model_copy(update=bad)])
    assert ns.cost_events().data == []
    assert ns.budget_status()[0].spend_microdollars == 0
    ns.close()
    assert LocalNullSpend(path=path).cost_events().data == []  # nothing on file either


def test_report_batch_limits_and_idempotency(tmp_path: Path) -> None:
    path = tmp_path / "spend.db"
    ns = LocalNullSpend([LocalBudget.total(10**9)], path=path)
    event = NewCostEvent(provider="openai", model="gpt-4o-mini", input_tokens=1_000)
    with pytest.raises(ValidationError):
        ns.report_batch([])
    with pytest.raises(ValidationError):
        ns.report_batch([event] * (MAX_BATCH + 1))
    first = ns.report_batch([event] * MAX_BATCH, idempotency_key="k")
    assert ns.report_batch([event] * MAX_BATCH, idempotency_key="k") == first
    with pytest.raises(ConflictError):
        ns.report_batch([event], idempotency_key="k")
    ns.report(event, idempotency_key="k")  # a single report's keys are apart from a batch's
    with pytest.raises(ValidationError):  # as on the server, which stores <key>#<index>
        ns.report_batch([event], idempotency_key="k#1")
    ns.close()
    # Recorded once, and on file: the next process counts it.
    again = LocalNullSpend([LocalBudget.total(10**9)], path=path)
    assert again.budget_status()[0].spend_microdollars == (MAX_BATCH + 1) * 150
    assert set(first.ids) <= {e.id for e in again.cost_events(limit=MAX_BATCH + 1).data}
    # A retry after the restart (what the keys are for) is answered, not counted again: the
    # keys lived in memory only, and it was counted twice.
    assert again.report_batch([event] * MAX_BATCH, idempotency_key="k") == first
    assert again.report(event, idempotency_key="k").cost_microdollars == 150
    with pytest.raises(ConflictError):
        again.report_batch([event], idempotency_key="k")
    assert again.budget_status()[0].spend_microdollars == (MAX_BATCH + 1) * 150


def test_the_background_reporter_records_in_process() -> None:
    ns = LocalNullSpend([LocalBudget.total(10**9)])
    reporter = CostReporter(ns, interval=30)
    for _ in range(150):
        assert reporter.report(REPORTED)
    reporter.close()
    assert reporter.stats.sent == 150
    (status,) = ns.budget_status()
    assert status.spend_microdollars == 150 * ns.cost_events().data[0].cost_microdollars


def _report_in_a_child(path: Path) -> None:
    reporter = CostReporter(LocalNullSpend(path=path), interval=60)
    for _ in range(5):
        reporter.report(REPORTED)


def test_what_a_reporter_holds_is_recorded_before_the_file_is_let_go(tmp_path: Path) -> None:
    """The engine let its file go first (``close()``, the end of a ``with``, a multiprocessing
    child's exit) and the reporter's last batch was refused: in a bug hunt 5 of 5 events were
    lost either way, where ``NullSpend.close()`` sends what its reporters hold first."""
    path = tmp_path / "spend.db"
    with LocalNullSpend(path=path) as ns:
        reporter = CostReporter(ns, interval=60)
        for _ in range(5):
            assert reporter.report(REPORTED)
    assert (reporter.stats.sent, reporter.stats.dropped_failed) == (5, 0)
    child = multiprocessing.get_context("fork").Process(target=_report_in_a_child, args=(path,))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert len(LocalNullSpend(path=path).cost_events().data) == 10


def test_a_report_priced_while_the_file_is_let_go_is_refused_not_left_uncounted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine checked it still had its file before pricing a report, not under its lock: a
    report priced while a newer engine took the file over was written after that engine had
    summed the file. In a bug hunt the new engine's cap saw 0 of the 2,500 microdollars the
    report then put on file."""
    path = tmp_path / "spend.db"
    pricing_started, priced = threading.Event(), threading.Event()
    catalog_cost = embedded._catalog_cost

    def priced_slowly(*args: Any) -> int:
        pricing_started.set()
        priced.wait(30)
        return catalog_cost(*args)

    monkeypatch.setattr(embedded, "_catalog_cost", priced_slowly)
    older = LocalNullSpend(path=path)
    answers: list[object] = []

    def report() -> None:
        try:
            answers.append(older.report(REPORTED))
        except ConflictError as error:
            answers.append(error)

    reporting = threading.Thread(target=report)
    reporting.start()
    assert pricing_started.wait(30)
    newer = LocalNullSpend([LocalBudget.total(10**9)], path=path)
    priced.set()
    reporting.join(30)
    assert isinstance(answers[0], ConflictError)
    (status,) = newer.budget_status()
    newer.close()
    (on_file,) = LocalNullSpend([LocalBudget.total(10**9)], path=path).budget_status()
    assert status.spend_microdollars == on_file.spend_microdollars == 0


def test_async_embedded_has_the_async_clients_calls() -> None:
    async def run() -> None:
        ns = AsyncLocalNullSpend([LocalBudget.total(10**9)])
        recorded = await ns.report(REPORTED)
        batch = await ns.report_batch([REPORTED])
        assert await ns.flush() is True
        page = await ns.cost_events()
        assert [e.id for e in page.data] == [batch.ids[0], recorded.id]
        await ns.close()

    asyncio.run(run())


def reserving_from_the_request(ns: NullSpend | LocalNullSpend) -> tuple[int, bool, int, bool]:
    """A reservation from the provider request and a settle from usage: the server estimates
    and prices them, and so must the engine in-process."""
    request = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    priced = ns.reserve(request=request)
    ns.settle(priced.reservation_id, usage=Usage(input_tokens=40, output_tokens=200))
    unknown = ns.reserve(request={"model": "no-such-model", "messages": []})
    ns.release(unknown.reservation_id)
    (event,) = ns.cost_events().data
    return priced.estimate_microdollars, priced.unpriced, event.cost_microdollars, unknown.unpriced


def priced_in_the_priority_tier(ns: NullSpend | LocalNullSpend) -> tuple[int, int, int]:
    """A call OpenAI served in its priority tier, reserved from its request, settled from its
    usage and the tier its answer named; and the same call reported."""
    request = {"model": "gpt-5", "max_completion_tokens": 100, "service_tier": "priority"}
    held = ns.reserve(request={**request, "messages": [{"role": "user", "content": "Hi"}]})
    usage = Usage(input_tokens=100_000, output_tokens=10_000)
    ns.settle(held.reservation_id, usage=usage, service_tier="priority")
    ns.report(
        NewCostEvent(
            provider="openai",
            model="gpt-5",
            input_tokens=100_000,
            output_tokens=10_000,
            service_tier="priority",
        )
    )
    settled, reported = (event.cost_microdollars for event in ns.cost_events().data[::-1])
    return held.estimate_microdollars, settled, reported


def test_usage_is_priced_in_the_service_tier_that_served_it(server: RunningServer) -> None:
    """gpt-5 in priority: $2.50 input and $20 output per million tokens, twice the standard
    rates; the estimate too."""
    with NullSpend(server.admin_key, server.base_url) as served:
        expected = priced_in_the_priority_tier(served)
    assert priced_in_the_priority_tier(LocalNullSpend()) == expected
    request = {"model": "gpt-5", "max_completion_tokens": 100, "messages": []}
    standard = estimate_request_body(request).microdollars
    assert expected[0] > standard + 100 * 10 - 10  # at least the output's priority surcharge
    assert expected[1:] == (250_000 + 200_000, 250_000 + 200_000)


def test_a_reservation_from_the_request_and_a_settle_from_usage(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as served:
        expected = reserving_from_the_request(served)
    local = LocalNullSpend()
    assert reserving_from_the_request(local) == expected
    assert expected[:3] == (
        estimate_request(
            ANTHROPIC_MESSAGES,
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 300,
                "messages": [{"role": "user", "content": "Hi"}],
            },
            json.dumps(
                {
                    "model": "claude-sonnet-4-5",
                    "max_tokens": 300,
                    "messages": [{"role": "user", "content": "Hi"}],
                },
                separators=(",", ":"),
            ).encode(),
        ).microdollars,
        False,
        40 * 3 + 200 * 15,
    )
    assert expected[3] is True
    with pytest.raises(ValidationError):  # no estimate and nothing to make one from
        local.reserve()
    held = local.reserve(1_000, model="no-such-model")
    with pytest.raises(ValidationError, match="not in the pricing catalog"):
        local.settle(held.reservation_id, usage=Usage(input_tokens=1))
