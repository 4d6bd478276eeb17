"""``NullSpend`` and ``AsyncNullSpend`` against a real server: typed results, one typed error per
code with the server's details, retries only where repeating is safe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from nullspend.client import (
    AsyncNullSpend,
    CostReporter,
    NewCostEvent,
    NullSpend,
    Reservation,
    calls,
)
from nullspend.errors import (
    API_ERRORS,
    AuthenticationError,
    BudgetExceededError,
    BudgetUnavailableError,
    ConflictError,
    ConnectionFailedError,
    CustomerBudgetExceededError,
    DeniedError,
    ErrorCode,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    SessionLimitExceededError,
    TagBudgetExceededError,
    ValidationError,
    VelocityExceededError,
)
from nullspend.usage import Usage
from tests.fakes.interposed import interposed
from tests.fakes.upstream import serving
from tests.nullspend_server.conftest import RunningServer, start_server

# gpt-4o-mini: $0.15 input, $0.60 output per million tokens
USAGE = Usage(input_tokens=1_000, output_tokens=500)
USAGE_COST = 1_000 * 0.15 + 500 * 0.6


def budget(server: RunningServer, **fields: Any) -> None:
    with server.client() as admin:
        admin.post("/api/budgets", json=fields).raise_for_status()


def test_every_error_code_has_its_exception() -> None:
    assert set(API_ERRORS) == set(ErrorCode)
    assert all(issubclass(API_ERRORS[c], DeniedError) for c in ErrorCode if "exceeded" in c)


def test_reserve_settle_and_read_back(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        me = ns.introspect()
        budget(server, entityType="api_key", entityId=me.key_id, limitMicrodollars=1_000_000)
        reservation = ns.reserve(
            model="gpt-4o-mini",
            request={"model": "gpt-4o-mini", "max_tokens": 500, "messages": []},
            session_id="s-1",
            tags={"team": "ml"},
        )
        assert reservation.estimate_microdollars > 0
        (status,) = ns.budget_status()
        assert status.reserved_microdollars == reservation.estimate_microdollars
        settled = ns.settle(reservation.reservation_id, usage=USAGE, model="gpt-4o-mini")
        assert (settled.status, settled.cost_microdollars) == ("settled", USAGE_COST)
        (status,) = ns.budget_status()
        assert (status.spend_microdollars, status.reserved_microdollars) == (USAGE_COST, 0)
        assert status.remaining_microdollars == 1_000_000 - USAGE_COST
        (event,) = ns.cost_events(session_id="s-1").data
        assert event.id == settled.cost_event_id
        assert (event.reservation_id, event.input_tokens, event.tags) == (
            reservation.reservation_id,
            1_000,
            {"team": "ml"},
        )
        (listed,) = ns.budgets()
        assert (listed.entity_id, listed.limit_microdollars) == (me.key_id, 1_000_000)

        # reserve_id: the same reservation, answered with its id alone.
        held = ns.reserve_id(2_000, trace_id="t-1")
        (status,) = ns.budget_status()
        assert status.reserved_microdollars == 2_000
        ns.settle(held, cost_microdollars=1_500)
        (event,) = ns.cost_events(trace_id="t-1").data
        assert (event.reservation_id, event.cost_microdollars) == (held, 1_500)

        released = ns.release(ns.reserve(1_000).reservation_id)
        assert released.status == "released"
        with pytest.raises(ConflictError) as twice:
            ns.release(released.reservation_id)
        assert twice.value.status == 409
        with pytest.raises(NotFoundError):
            ns.settle("rsv_missing", cost_microdollars=1)


def test_reports_are_recorded_once_per_idempotency_key(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        event = NewCostEvent(provider="openai", model="gpt-4o-mini", input_tokens=1_000)
        first = ns.report(event, idempotency_key="call-1")
        again = ns.report(event, idempotency_key="call-1")
        assert again.id == first.id
        assert first.cost_microdollars == 150
        batch = ns.report_batch([event, event.model_copy(update={"customer": "acme"})])
        assert batch.inserted == 2
        assert len(ns.cost_events(limit=10).data) == 3
        (acme,) = ns.cost_events(customer="acme").data
        assert acme.id == batch.ids[1]


def test_denials_raise_their_typed_error_with_the_server_details(server: RunningServer) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        me = ns.introspect()
        budget(server, entityType="api_key", entityId=me.key_id, limitMicrodollars=5_000)
        with pytest.raises(BudgetExceededError) as over:
            ns.reserve(6_000)
        assert over.value.status == 429
        assert over.value.details == {
            "entity_type": "api_key",
            "entity_id": me.key_id,
            "budget_limit_microdollars": 5_000,
            "budget_spend_microdollars": 0,
            "estimated_cost_microdollars": 6_000,
        }
        budget(server, entityType="tag", entityId="team=ml", limitMicrodollars=100)
        with pytest.raises(TagBudgetExceededError) as tag:
            ns.reserve(200, tags={"team": "ml"})
        assert tag.value.details["tag_value"] == "ml"
        budget(server, entityType="customer", entityId="acme", limitMicrodollars=100)
        with pytest.raises(CustomerBudgetExceededError) as customer:
            ns.reserve(200, customer="acme")
        assert customer.value.details["customer_id"] == "acme"

    with NullSpend(server.new_key(), server.base_url) as other:
        budget(
            server,
            entityType="user",
            limitMicrodollars=10**9,
            sessionLimitMicrodollars=1_000,
            velocityLimitMicrodollars=3_000,
            windowSeconds=60,
            cooldownSeconds=30,
        )
        with pytest.raises(SessionLimitExceededError) as session:
            other.reserve(2_000, session_id="s-9")
        assert session.value.details["session_limit_microdollars"] == 1_000
        other.reserve(2_500)
        with pytest.raises(VelocityExceededError) as velocity:
            other.reserve(1_000)
        assert velocity.value.retry_after == 30
        assert velocity.value.details["velocity_limit_microdollars"] == 3_000

    with (
        NullSpend("ns_live_sk_" + "0" * 32, server.base_url) as stranger,
        pytest.raises(AuthenticationError),
    ):
        stranger.introspect()
    with NullSpend(server.admin_key, server.base_url) as ns:
        with pytest.raises(ValidationError) as invalid:
            ns.reserve(-1)
        assert invalid.value.code == "validation_error"


def test_async_client(server: RunningServer) -> None:
    """Fifteen concurrent reservations of 1,000 against a cap of 10,000: ten admitted, five
    denied with the typed error, and the cap holds after settling."""

    async def run() -> None:
        async with AsyncNullSpend(server.admin_key, server.base_url) as ns:
            me = await ns.introspect()
            budget(server, entityType="api_key", entityId=me.key_id, limitMicrodollars=10_000)
            outcomes = await asyncio.gather(
                *(ns.reserve(1_000) for _ in range(15)), return_exceptions=True
            )
            admitted = [r for r in outcomes if isinstance(r, Reservation)]
            denied = [r for r in outcomes if isinstance(r, BudgetExceededError)]
            assert (len(admitted), len(denied)) == (10, 5)
            for reservation in admitted:
                await ns.settle(reservation.reservation_id, cost_microdollars=500)
            (status,) = await ns.budget_status()
            assert (status.spend_microdollars, status.reserved_microdollars) == (5_000, 0)
            page = await ns.cost_events(limit=20)
            assert sum(e.cost_microdollars for e in page.data) == 5_000
            held = await ns.reserve_id(1_000)  # the id alone, as the async integrations reserve
            (status,) = await ns.budget_status()
            assert status.reserved_microdollars == 1_000
            assert (await ns.release(held)).status == "released"

    asyncio.run(run())


def test_configured_from_the_environment(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NULLSPEND_API_KEY", server.admin_key)
    monkeypatch.setenv("NULLSPEND_BASE_URL", server.base_url + "/")
    with NullSpend() as ns:
        assert ns.introspect().role == "admin"
    monkeypatch.delenv("NULLSPEND_BASE_URL")
    with pytest.raises(ValueError, match="NULLSPEND_BASE_URL"):
        NullSpend()


def test_whitespace_around_the_key_and_url_is_dropped_and_a_bad_one_refused(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mounted secret or ``$(cat file)`` ends with a newline: no header carries it, and the
    request failed as a connection failure, retried, its message quoting the whole key."""
    monkeypatch.setenv("NULLSPEND_API_KEY", f" {server.admin_key}\n")
    monkeypatch.setenv("NULLSPEND_BASE_URL", f"{server.base_url}/ \n")
    with NullSpend() as ns:
        assert ns.introspect().role == "admin"
    with pytest.raises(ValueError, match="HTTP header") as bad_key:
        NullSpend("ns_live_sk_secret\nrest", server.base_url)
    assert "secret" not in str(bad_key.value)
    for url in ["http://127.0.0.1:9\x00", "http://127.0.0.1\n:9", "localhost:8080", "http://"]:
        with pytest.raises(ValueError, match="not an http"):
            NullSpend(server.admin_key, url)


def test_a_connection_failure_never_tells_the_key(server: RunningServer) -> None:
    """httpx quotes a header it cannot send: the ``ConnectionFailedError`` made of it, which
    background settles log, tells only its kind."""
    unsendable = calls.Connection(server.base_url, server.admin_key + "\n")  # not resolved
    with NullSpend(server.admin_key, server.base_url, max_retries=0) as ns:
        ns.connection = unsendable
        with pytest.raises(ConnectionFailedError) as failed:
            ns.introspect()
    assert server.admin_key not in str(failed.value)

    async def run() -> None:
        async with AsyncNullSpend(server.admin_key, server.base_url, max_retries=0) as ans:
            ans.connection = unsendable
            with pytest.raises(ConnectionFailedError) as failed:
                await ans.introspect()
        assert server.admin_key not in str(failed.value)

    asyncio.run(run())


def test_one_async_client_across_event_loops(server: RunningServer) -> None:
    """Each ``asyncio.run()`` has a loop of its own: the connections the first one opened could
    not serve the next, whose calls raised "Event loop is closed". Each loop has its own."""
    ns = AsyncNullSpend(server.admin_key, server.base_url)

    async def reserve_and_settle() -> str:
        reservation = await ns.reserve(1_000)
        return (await ns.settle(reservation.reservation_id, cost_microdollars=500)).status

    async def close() -> bool:
        await ns.close()
        return ns._http.get().is_closed

    assert [asyncio.run(reserve_and_settle()) for _ in range(3)] == ["settled"] * 3
    assert asyncio.run(close())

    given = httpx.AsyncClient()
    asyncio.run(AsyncNullSpend(server.admin_key, server.base_url, http_client=given).close())
    assert given.is_closed


def test_closing_a_scoped_copy_leaves_its_original_open(server: RunningServer) -> None:
    """A scoped copy shares its original's connections and settle queue: leaving
    ``with ns.customer(...)`` closed them, and the original's next calls failed. Closing the
    copy now only sends what is queued."""
    budget(server, entityType="user", limitMicrodollars=10**9)
    with NullSpend(server.admin_key, server.base_url) as ns:
        held = ns.reserve_id(1_000)
        with ns.customer("acme") as acme:
            acme.settle_later(acme.reserve_id(1_000), cost_microdollars=400)
        with NullSpend(server.admin_key, server.base_url) as reader:  # a queue of its own
            (status,) = reader.budget_status()
        assert (status.spend_microdollars, status.reserved_microdollars) == (400, 1_000)
        ns.settle_later(held, cost_microdollars=300)
        assert ns.budget_status()[0].spend_microdollars == 700

    async def run() -> None:
        async with AsyncNullSpend(server.admin_key, server.base_url) as ans:
            async with ans.customer("globex") as globex:
                globex.settle_later(await globex.reserve_id(1_000), cost_microdollars=200)
            (status,) = await ans.budget_status()
            assert (status.spend_microdollars, status.reserved_microdollars) == (900, 0)

    asyncio.run(run())


# --- retries, against a server that fails on purpose ----------------------------------------


class Flaky:
    """Answers ``failures`` times 503 budget_unavailable (with ``retry_after``, 0 unless
    changed), then succeeds; records each request's path and Idempotency-Key."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.retry_after = "0"
        self.seen: list[tuple[str, str | None]] = []
        self.reservation_ids: list[str] = []

    async def endpoint(self, request: Request) -> JSONResponse:
        self.seen.append((request.url.path, request.headers.get("idempotency-key")))
        if request.url.path == "/api/reservations":
            self.reservation_ids.append((await request.json())["reservationId"])
        if len(self.seen) <= self.failures:
            error = {"code": "budget_unavailable", "message": "storage down", "details": None}
            return JSONResponse({"error": error}, 503, {"Retry-After": self.retry_after})
        if request.url.path == "/api/auth/introspect":
            data = {"keyId": "k", "orgId": "o", "role": "admin", "apiVersion": "1"}
            return JSONResponse({"data": data})
        if request.url.path.endswith("/batch"):
            return JSONResponse({"inserted": 1, "ids": ["ce_1"]}, status_code=201)
        now = "2026-11-23T00:00:00Z"
        if request.url.path == "/api/reservations":
            made = {
                "reservationId": self.reservation_ids[-1],
                "estimateMicrodollars": 1_000,
                "expiresAt": now,
            }
            return JSONResponse({"data": made}, status_code=201)
        return JSONResponse(
            {"data": {"id": "ce_1", "createdAt": now, "costMicrodollars": 1}}, status_code=201
        )


@pytest.fixture
def flaky() -> Iterator[tuple[str, Flaky]]:
    handler = Flaky(failures=2)
    paths = [
        "/api/auth/introspect",
        "/api/cost-events",
        "/api/cost-events/batch",
        "/api/reservations",
    ]
    app = Starlette(routes=[Route(p, handler.endpoint, methods=["GET", "POST"]) for p in paths])
    with serving(app) as base_url:
        yield base_url, handler


def test_idempotent_calls_are_retried(flaky: tuple[str, Flaky]) -> None:
    base, handler = flaky
    with NullSpend("ns_live_sk_" + "1" * 32, base) as ns:
        assert ns.introspect().org_id == "o"
    assert len(handler.seen) == 3


def test_a_report_is_retried_with_the_same_idempotency_key(flaky: tuple[str, Flaky]) -> None:
    base, handler = flaky
    with NullSpend("ns_live_sk_" + "1" * 32, base) as ns:
        ns.report(NewCostEvent(provider="openai", model="gpt-4o-mini"))
    keys = {key for _, key in handler.seen}
    assert len(handler.seen) == 3
    assert len(keys) == 1
    assert None not in keys


def test_a_reservation_is_retried_under_its_own_id(flaky: tuple[str, Flaky]) -> None:
    """A reserve carries an id of the client's making: sent again after a lost answer, it
    answers the reservation its first try made, never a second one."""
    base, handler = flaky
    with NullSpend("ns_live_sk_" + "1" * 32, base) as ns:
        reservation = ns.reserve(1_000)
    assert [path for path, _ in handler.seen] == ["/api/reservations"] * 3
    (chosen,) = set(handler.reservation_ids)
    assert reservation.reservation_id == chosen


@pytest.mark.parametrize("retry_after", ["-1", "nan", "inf"])
def test_a_retry_after_that_is_no_wait_is_ignored(
    flaky: tuple[str, Flaky], retry_after: str
) -> None:
    """A misbehaving proxy's Retry-After of -1 (or nan) made the sleep raise ValueError, and
    inf waited the longest wait: the backoff applies instead."""
    base, handler = flaky
    handler.retry_after = retry_after
    started = time.monotonic()
    with NullSpend("ns_live_sk_" + "1" * 32, base) as ns:
        assert ns.introspect().org_id == "o"
    assert len(handler.seen) == 3
    assert time.monotonic() - started < 10


def test_retries_give_up_after_max_retries(flaky: tuple[str, Flaky]) -> None:
    base, handler = flaky
    with (
        NullSpend("ns_live_sk_" + "1" * 32, base, max_retries=1) as ns,
        pytest.raises(BudgetUnavailableError),
    ):
        ns.introspect()
    assert len(handler.seen) == 2


def test_an_unreachable_server_is_a_connection_error() -> None:
    with (
        NullSpend("ns_live_sk_" + "1" * 32, "http://127.0.0.1:9", max_retries=1) as ns,
        pytest.raises(ConnectionFailedError),
    ):
        ns.introspect()


def test_a_settle_or_release_whose_answer_was_lost_is_retried_once_done(
    server: RunningServer,
) -> None:
    """The first try lands but its answer is lost: the retry hears "already settled" (or
    released), which is success, and the call is recorded once."""
    tries: dict[str, int] = {}

    async def lose_first_answers(request: Request, real: Response) -> Response:
        key = f"{request.method} {request.url.path}"
        tries[key] = tries.get(key, 0) + 1
        if "/api/reservations/" in request.url.path and tries[key] == 1:
            return JSONResponse({"error": "bad gateway"}, 502)
        return real

    with (
        interposed(server.base_url, lose_first_answers) as base_url,
        NullSpend(server.admin_key, base_url) as ns,
    ):
        first = ns.reserve(1_000, model="gpt-4o-mini")
        settled = ns.settle(first.reservation_id, cost_microdollars=700)
        second = ns.reserve(1_000, model="gpt-4o-mini")
        released = ns.release(second.reservation_id)
    assert (settled.status, released.status) == ("settled", "released")
    assert tries[f"POST /api/reservations/{first.reservation_id}/settle"] == 2
    assert tries[f"DELETE /api/reservations/{second.reservation_id}"] == 2
    with NullSpend(server.admin_key, server.base_url) as direct:
        events = direct.cost_events().data
    assert [e.cost_microdollars for e in events] == [700]


def test_rate_limited_and_forbidden_from_a_live_server(database_url: str) -> None:
    """A reservation counts against the key's requests a minute as a proxied call does; a
    viewer key may read but not reserve. Each raises its typed error with the server's word."""
    limited = start_server(database_url, rate_limit_per_minute=2)
    try:
        with NullSpend(limited.admin_key, limited.base_url, max_retries=0) as ns:
            ns.reserve(10)
            ns.reserve(10)
            with pytest.raises(RateLimitedError) as too_many:
                ns.reserve(10)
            assert too_many.value.status == 429
            assert too_many.value.retry_after is not None
            assert 1 <= too_many.value.retry_after <= 60
            assert ns.budget_status() == []  # reads are not counted
        with NullSpend(limited.new_key("viewer"), limited.base_url) as viewer:
            assert viewer.cost_events().data == []
            with pytest.raises(PermissionDeniedError) as forbidden:
                viewer.reserve(10)
            assert forbidden.value.code == "forbidden"
            assert forbidden.value.details == {"requiredRole": "member", "role": "viewer"}
    finally:
        limited.stop()


def test_a_reserve_refused_after_a_try_that_may_have_landed_is_released(
    database_url: str,
) -> None:
    """The first try makes the reservation and its answer is lost; the retry, under the same
    id, is refused rate_limited (the key's limit is checked before the id is looked up). That
    refusal says nothing of the first try: its reservation is released, not held until it
    expires and is charged its estimate."""
    limited = start_server(database_url, rate_limit_per_minute=1)
    lost: set[str] = set()

    async def lose_each_keys_first_reserve(request: Request, real: Response) -> Response:
        key = request.headers["x-nullspend-key"]
        if request.url.path == "/api/reservations" and key not in lost:
            lost.add(key)
            return JSONResponse({"error": "bad gateway"}, 502)
        return real

    async def reserve_async(base_url: str) -> None:
        async with AsyncNullSpend(limited.new_key(), base_url, max_retries=1) as ans:
            with pytest.raises(RateLimitedError):
                await ans.reserve(1_000)

    try:
        budget(limited, entityType="user", limitMicrodollars=10**9)
        while time.time() % 60 > 56:  # each key's two tries in one minute of the limiter's
            time.sleep(0.2)
        with interposed(limited.base_url, lose_each_keys_first_reserve) as base:
            with (
                NullSpend(limited.admin_key, base, max_retries=1) as ns,
                pytest.raises(RateLimitedError),
            ):
                ns.reserve(1_000)
            asyncio.run(reserve_async(base))
        assert len(lost) == 2
        with NullSpend(limited.admin_key, limited.base_url) as ns:
            (status,) = ns.budget_status()
        assert (status.reserved_microdollars, status.spend_microdollars) == (0, 0)
    finally:
        limited.stop()


def test_a_reserve_whose_answer_is_lost_holds_nothing_it_does_not_use(
    server: RunningServer,
) -> None:
    """The server makes the reservation, and its answer does not reach the client in time. Sent
    again under its id, the reserve answers the reservation made, which the call then settles;
    abandoned (the caller cancelled it), it is released. Neither is held for an hour and then
    charged its estimate."""
    with NullSpend(server.admin_key, server.base_url) as ns:  # so that what is held shows
        budget(
            server, entityType="api_key", entityId=ns.introspect().key_id, limitMicrodollars=10**9
        )
    first_answers_late: list[str] = []

    async def late_first_reserve(request: Request, real: Response) -> Response:
        if request.url.path == "/api/reservations" and not first_answers_late:
            first_answers_late.append("late")
            await asyncio.sleep(1.0)
        return real

    with interposed(server.base_url, late_first_reserve) as base:
        with NullSpend(server.admin_key, base, timeout=0.3) as ns:
            reservation = ns.reserve(1_000)  # timed out once, then answered under its id
            ns.settle(reservation.reservation_id, cost_microdollars=600)

        async def abandoned() -> None:
            async with AsyncNullSpend(server.admin_key, base) as ans:
                first_answers_late.clear()
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ans.reserve(1_000), 0.3)

        asyncio.run(abandoned())
    with NullSpend(server.admin_key, server.base_url) as ns:
        deadline = time.monotonic() + 10
        while ns.budget_status()[0].reserved_microdollars:
            assert time.monotonic() < deadline, "a reservation nobody uses is still held"
            time.sleep(0.1)
        (event,) = ns.cost_events().data
        assert event.cost_microdollars == 600


def test_a_reservation_id_is_one_path_segment(server: RunningServer) -> None:
    """The id went into the path as it was: ``release("../budgets/<id>")`` was DELETE
    /api/budgets/<id>, and deleted that budget (its cap gone). Whatever it holds, it is one
    segment of a reservation's path, which names no reservation."""
    budget(server, entityType="user", limitMicrodollars=10**9)
    with NullSpend(server.admin_key, server.base_url, max_retries=0) as ns:
        (capped,) = ns.budgets()
        for call in (ns.release, ns.extend, lambda rid: ns.settle(rid, cost_microdollars=1)):
            with pytest.raises(NotFoundError):
                call(f"../budgets/{capped.id}")
        assert [b.id for b in ns.budgets()] == [capped.id]


def test_an_answer_whose_body_cannot_be_decoded_is_no_answer() -> None:
    """A proxy's answer marked gzip that is not: httpx's DecodingError reached the caller as
    itself (no ``NullSpendError``) and was not retried. It is no answer, as a proxy's page is."""
    tries: list[str] = []

    async def broken_gzip(request: Request) -> Response:
        tries.append(request.url.path)
        return Response(b"not gzip", 200, {"Content-Encoding": "gzip"}, "application/json")

    app = Starlette(routes=[Route("/{path:path}", broken_gzip, methods=["GET", "POST"])])
    with serving(app) as base, NullSpend("ns_live_sk_" + "1" * 32, base, max_retries=1) as ns:
        with pytest.raises(ConnectionFailedError):
            ns.introspect()

        async def run() -> None:
            async with AsyncNullSpend("ns_live_sk_" + "1" * 32, base, max_retries=1) as ans:
                with pytest.raises(ConnectionFailedError):
                    await ans.introspect()

        asyncio.run(run())
    assert tries == ["/api/auth/introspect"] * 4


def test_an_async_clients_settles_go_the_way_its_http_client_does(server: RunningServer) -> None:
    """A gateway in front of the server wants a token, which the caller's ``http_client``
    carries. The settles, sent from a thread with a synchronous client of their own, went
    without it: refused, and their reservations held (and charged their estimates at expiry).
    A ``CostReporter`` on the client sent nothing either."""
    refused: list[str] = []

    async def gateway(request: Request) -> Response:
        if request.headers.get("x-gateway-token") != "secret":
            refused.append(request.url.path)
            return JSONResponse({"message": "no token"}, 401)
        async with httpx.AsyncClient(base_url=server.base_url) as upstream:
            real = await upstream.request(
                request.method,
                request.url.path,
                content=await request.body(),
                headers={k: v for k, v in request.headers.items() if k != "host"},
            )
        return Response(real.content, real.status_code, media_type="application/json")

    methods = ["GET", "POST", "DELETE"]
    app = Starlette(routes=[Route("/{path:path}", gateway, methods=methods)])

    async def run(base: str) -> None:
        given = httpx.AsyncClient(headers={"X-Gateway-Token": "secret"})
        async with AsyncNullSpend(server.admin_key, base, http_client=given) as ans:
            ans.settle_later(await ans.reserve_id(1_000), cost_microdollars=400)
            reporter = CostReporter(ans, interval=30)
            reporter.report(NewCostEvent(provider="openai", model="gpt-4o-mini"))
        assert reporter.stats.sent == 1

    with serving(app) as base:
        asyncio.run(run(base))
    assert refused == []
    with NullSpend(server.admin_key, server.base_url) as ns:
        assert sorted(e.cost_microdollars for e in ns.cost_events().data) == [0, 400]
