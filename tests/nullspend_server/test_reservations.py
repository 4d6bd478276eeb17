"""The enforcement engine over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import httpx
import pytest

from nullspend.attribution import TAG_EXPIRED
from nullspend_server.db.database import Database
from nullspend_server.db.tables import utcnow
from nullspend_server.engine.settle import settle_abandoned
from tests.nullspend_server.conftest import RunningServer, start_server
from tests.nullspend_server.dbtools import execute, rows


def budget(admin: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = admin.post("/api/budgets", json=fields)
    assert response.status_code == 201, response.text
    return dict(response.json()["data"])


def org_budget(admin: httpx.Client, limit: int, **fields: Any) -> dict[str, Any]:
    return budget(admin, entityType="user", limitMicrodollars=limit, **fields)


def reserve(client: httpx.Client, estimate: int, **fields: Any) -> httpx.Response:
    return client.post("/api/reservations", json={"estimateMicrodollars": estimate, **fields})


def read_budget(admin: httpx.Client, budget_id: str) -> dict[str, Any]:
    return dict(admin.get(f"/api/budgets/{budget_id}").json()["data"])


def test_reserve_then_settle_replaces_the_estimate(
    server: RunningServer, admin: httpx.Client
) -> None:
    b = org_budget(admin, 1_000_000)
    reserved = reserve(admin, 40_000, tags={"team": "ml"}, customer="acme", sessionId="s1")
    assert reserved.status_code == 201
    data = reserved.json()["data"]
    assert data["estimateMicrodollars"] == 40_000
    assert read_budget(admin, b["id"])["reservedMicrodollars"] == 40_000
    settled = admin.post(
        f"/api/reservations/{data['reservationId']}/settle",
        json={"costMicrodollars": 12_345, "model": "gpt-4o", "provider": "openai"},
    )
    assert settled.status_code == 200, settled.text
    state = read_budget(admin, b["id"])
    assert (state["spendMicrodollars"], state["reservedMicrodollars"]) == (12_345, 0)
    [event] = rows(server.database_url, "SELECT * FROM cost_events")
    assert event["cost_microdollars"] == 12_345
    assert event["source"] == "api"
    assert event["reservation_id"] == data["reservationId"]
    assert event["session_id"] == "s1"
    tags = rows(server.database_url, "SELECT key, value FROM cost_event_tags ORDER BY key")
    assert tags == [{"key": "customer", "value": "acme"}, {"key": "team", "value": "ml"}]


def test_settle_with_usage_prices_it_with_the_catalog(admin: httpx.Client) -> None:
    rid = reserve(admin, 500_000, model="claude-sonnet-4").json()["data"]["reservationId"]
    usage = {"inputTokens": 1_000, "cacheReadTokens": 150_000, "outputTokens": 2_000}
    settled = admin.post(f"/api/reservations/{rid}/settle", json={"usage": usage})
    # 1000 x $3 + 150000 x $0.30 + 2000 x $15 per million tokens
    assert settled.json()["data"]["costMicrodollars"] == 3_000 + 45_000 + 30_000


def test_a_settle_with_usage_of_no_active_reservation_says_so(admin: httpx.Client) -> None:
    """Settled with usage (its model left to the reservation), a missing reservation answered
    400 "model None is not in the pricing catalog", and a released one the same: now 404 and
    409, as a settle with costMicrodollars answers."""
    usage = {"usage": {"inputTokens": 10, "outputTokens": 10}}
    missing = admin.post("/api/reservations/rsv_missing_00000000000/settle", json=usage)
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    rid = reserve(admin, 500, model="gpt-4o-mini").json()["data"]["reservationId"]
    assert admin.delete(f"/api/reservations/{rid}").status_code == 200
    released = admin.post(f"/api/reservations/{rid}/settle", json=usage)
    assert (released.status_code, released.json()["error"]["code"]) == (409, "conflict")
    unnamed = reserve(admin, 500).json()["data"]["reservationId"]  # no model to price with
    unpriced = admin.post(f"/api/reservations/{unnamed}/settle", json=usage)
    assert (unpriced.status_code, unpriced.json()["error"]["code"]) == (400, "validation_error")


def test_settles_priced_from_usage_at_once_never_starve_the_pool(
    small_pool_server: RunningServer,
) -> None:
    """A settle with usage and no model reads the reservation's model, then settles in a write
    transaction. Holding the read's connection meanwhile, settles arriving together each held
    one and waited for another until the pool ran out. Eight at once on a pool of two."""
    server = small_pool_server
    with server.client() as admin:
        ids = [
            reserve(admin, 10_000, model="gpt-4o-mini").json()["data"]["reservationId"]
            for _ in range(8)
        ]

    async def run() -> list[httpx.Response]:
        async with server.async_client() as client:
            usage = {"inputTokens": 1_000, "outputTokens": 100}
            return await asyncio.gather(
                *(client.post(f"/api/reservations/{i}/settle", json={"usage": usage}) for i in ids)
            )

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200] * 8, answers[0].text
    # 1,000 x $0.15 + 100 x $0.60 per million tokens
    assert {a.json()["data"]["costMicrodollars"] for a in answers} == {210}


def test_reservation_estimated_from_the_provider_request(admin: httpx.Client) -> None:
    request = {
        "model": "gpt-4o-mini",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hello"}],
    }
    data = admin.post("/api/reservations", json={"request": request}).json()["data"]
    assert 0 < data["estimateMicrodollars"] < 1_000  # 100 output tokens at $0.60/M plus input
    assert data["unpriced"] is False
    unknown = admin.post(
        "/api/reservations", json={"request": {**request, "model": "acme-private"}}
    ).json()["data"]
    assert unknown["unpriced"] is True
    assert unknown["estimateMicrodollars"] == 1_000_000
    settle = admin.post(
        f"/api/reservations/{unknown['reservationId']}/settle", json={"usage": {"inputTokens": 5}}
    )
    assert settle.status_code == 400
    assert "costMicrodollars" in settle.json()["error"]["message"]
    # Searches allowed past all reason estimate above one call's most: refused, as by the proxy,
    # not reserved at that most.
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 10**14}
    absurd = {"model": "claude-sonnet-4-5", "max_tokens": 100, "tools": [search], "messages": []}
    refused = admin.post("/api/reservations", json={"request": absurd})
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "validation_error"
    assert refused.json()["error"]["details"] == {"maxMicrodollars": 10**15}


def test_release_and_double_settle(admin: httpx.Client) -> None:
    b = org_budget(admin, 100_000)
    rid = reserve(admin, 30_000).json()["data"]["reservationId"]
    assert admin.delete(f"/api/reservations/{rid}").json()["data"]["status"] == "released"
    assert read_budget(admin, b["id"])["reservedMicrodollars"] == 0
    again = admin.post(f"/api/reservations/{rid}/settle", json={"costMicrodollars": 1})
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "conflict"
    missing = admin.delete("/api/reservations/rsv_missing")
    assert missing.status_code == 404


def test_budget_denial_body(admin: httpx.Client, server: RunningServer) -> None:
    key = server.new_key("member")
    key_id = httpx.get(
        f"{server.base_url}/api/auth/introspect", headers={"X-NullSpend-Key": key}
    ).json()["data"]["keyId"]
    budget(
        admin,
        entityType="api_key",
        entityId=key_id,
        limitMicrodollars=10_000,
        upgradeUrl="https://example.com/upgrade",
    )
    with server.client(key) as member:
        assert reserve(member, 6_000).status_code == 201
        denied = reserve(member, 6_000)
    assert denied.status_code == 429
    assert denied.headers["X-NullSpend-Denied"] == "1"
    body = denied.json()
    assert body["error"]["code"] == "budget_exceeded"
    assert body["error"]["details"] == {
        "entity_type": "api_key",
        "entity_id": key_id,
        "budget_limit_microdollars": 10_000,
        "budget_spend_microdollars": 0,
        "estimated_cost_microdollars": 6_000,
    }
    assert body["upgrade_url"] == "https://example.com/upgrade"


def test_customer_and_tag_denial_bodies(admin: httpx.Client) -> None:
    budget(
        admin,
        entityType="customer",
        entityId="acme",
        limitMicrodollars=5_000,
        upgradeUrl="https://example.com/upgrade?c={customer_id}",
    )
    budget(admin, entityType="tag", entityId="team=ml", limitMicrodollars=5_000)
    customer = reserve(admin, 6_000, customer="acme").json()
    assert customer["error"]["code"] == "customer_budget_exceeded"
    assert customer["error"]["details"] == {
        "customer_id": "acme",
        "budget_limit_microdollars": 5_000,
        "budget_spend_microdollars": 0,
    }
    assert customer["upgrade_url"] == "https://example.com/upgrade?c=acme"
    tag = reserve(admin, 6_000, tags={"team": "ml"}).json()
    assert tag["error"]["code"] == "tag_budget_exceeded"
    assert tag["error"]["details"] == {
        "tag_key": "team",
        "tag_value": "ml",
        "budget_limit_microdollars": 5_000,
        "budget_spend_microdollars": 0,
    }
    assert reserve(admin, 6_000, tags={"team": "search"}).status_code == 201  # other tag value


def test_soft_block_and_warn_policies(admin: httpx.Client) -> None:
    org_budget(admin, 10_000, policy="soft_block")
    assert reserve(admin, 8_000).status_code == 201
    assert reserve(admin, 8_000).status_code == 201  # overshoots once: soft
    assert reserve(admin, 1).status_code == 429  # at the limit now
    budget(admin, entityType="tag", entityId="mode=warn", limitMicrodollars=1, policy="warn")


def test_session_limit(admin: httpx.Client) -> None:
    org_budget(admin, 10**9, sessionLimitMicrodollars=10_000)
    first = reserve(admin, 7_000, sessionId="agent-run-1").json()["data"]["reservationId"]
    denied = reserve(admin, 7_000, sessionId="agent-run-1")
    assert denied.status_code == 429
    assert denied.json()["error"] == {
        "code": "session_limit_exceeded",
        "message": denied.json()["error"]["message"],
        "details": {
            "session_id": "agent-run-1",
            "session_spend_microdollars": 0,
            "session_limit_microdollars": 10_000,
        },
    }
    assert reserve(admin, 7_000, sessionId="agent-run-2").status_code == 201
    # settling corrects the session's spend to the actual cost
    admin.post(f"/api/reservations/{first}/settle", json={"costMicrodollars": 1_000})
    assert reserve(admin, 7_000, sessionId="agent-run-1").status_code == 201


def test_a_session_counts_its_calls_outside_the_limited_budget(
    admin: httpx.Client, server: RunningServer
) -> None:
    """Customer acme's budget caps a session at 5,000; the same session also makes a call for no
    customer. Its settle took its estimate out of the session's reserved amount, which its
    reserve had never added (no session limit applied to it): reserved went to -100,000 and
    acme's calls in the session were admitted past the limit (51,000 spent against 5,000).
    Every call made in a session now counts in the session's spend, as in embedded mode."""
    org_budget(admin, 10**9)
    budget(
        admin,
        entityType="customer",
        entityId="acme",
        limitMicrodollars=10**9,
        sessionLimitMicrodollars=5_000,
    )
    held = reserve(admin, 1_000, customer="acme", sessionId="s").json()["data"]["reservationId"]
    other = reserve(admin, 100_000, sessionId="s").json()["data"]["reservationId"]
    denied = reserve(admin, 1_000, customer="acme", sessionId="s")  # the other call is held
    assert denied.json()["error"]["code"] == "session_limit_exceeded"
    admin.post(f"/api/reservations/{other}/settle", json={"costMicrodollars": 0})
    admin.post(f"/api/reservations/{held}/settle", json={"costMicrodollars": 1_000})
    assert rows(
        server.database_url, "SELECT spend_microdollars, reserved_microdollars FROM session_spend"
    ) == [{"spend_microdollars": 1_000, "reserved_microdollars": 0}]
    admitted = 1
    while reserve(admin, 1_000, customer="acme", sessionId="s").status_code == 201:
        admitted += 1
        assert admitted <= 5, "the session limit did not hold"
    assert admitted == 5


def test_velocity_trips_a_cooldown_with_retry_after(admin: httpx.Client) -> None:
    org_budget(admin, 10**9, velocityLimitMicrodollars=2_500, windowSeconds=60, cooldownSeconds=30)
    assert reserve(admin, 1_000).status_code == 201
    assert reserve(admin, 1_000).status_code == 201
    tripped = reserve(admin, 1_000)
    assert tripped.status_code == 429
    assert tripped.json()["error"]["code"] == "velocity_exceeded"
    assert tripped.headers["Retry-After"] == "30"
    details = tripped.json()["error"]["details"]
    assert details["velocity_limit_microdollars"] == 2_500
    assert details["current_spend_microdollars"] == 2_000
    cooling = reserve(admin, 1)  # even a tiny request waits out the cooldown
    assert cooling.status_code == 429
    assert 1 <= int(cooling.headers["Retry-After"]) <= 30


def test_lazy_period_reset(server: RunningServer, admin: httpx.Client) -> None:
    b = org_budget(admin, 10_000, resetInterval="daily")
    rid = reserve(admin, 9_000).json()["data"]["reservationId"]
    admin.post(f"/api/reservations/{rid}/settle", json={"costMicrodollars": 9_000})
    assert reserve(admin, 2_000).status_code == 429
    yesterday = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    execute(
        server.database_url,
        "UPDATE budgets SET current_period_start = :start WHERE id = :id",
        start=yesterday.replace(tzinfo=None) if "sqlite" in server.database_url else yesterday,
        id=b["id"],
    )
    assert reserve(admin, 2_000).status_code == 201  # the crossing request starts a new period
    state = read_budget(admin, b["id"])
    assert state["spendMicrodollars"] == 0
    assert state["currentPeriodStart"].startswith(dt.datetime.now(dt.UTC).date().isoformat())


@pytest.mark.parametrize(
    "body",
    [
        {"estimateMicrodollars": -1},
        {"estimateMicrodollars": "5"},
        {"estimateMicrodollars": 2**63},
        {"estimateMicrodollars": 5, "unknown": 1},
        {"estimateMicrodollars": 5, "tags": {"_ns_estimated": "1"}},
        {"estimateMicrodollars": 5, "customer": "bad customer!"},
        {},
        {"request": {"messages": []}},
    ],
)
def test_reservation_validation(admin: httpx.Client, body: dict[str, Any]) -> None:
    response = admin.post("/api/reservations", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_viewer_cannot_reserve(server: RunningServer) -> None:
    with server.client(server.new_key("viewer")) as viewer:
        assert reserve(viewer, 1).status_code == 403


async def _reserve_many(server: RunningServer, count: int, estimate: int) -> list[int]:
    limits = httpx.Limits(max_connections=50)
    async with server.async_client(limits=limits) as client:
        responses = await asyncio.gather(
            *(
                client.post("/api/reservations", json={"estimateMicrodollars": estimate})
                for _ in range(count)
            )
        )
    return [r.status_code for r in responses]


def test_concurrent_reservations_admit_exactly_what_fits(
    server: RunningServer, admin: httpx.Client
) -> None:
    admitted = 37
    b = org_budget(admin, admitted * 1_000)
    statuses = asyncio.run(_reserve_many(server, 200, 1_000))
    assert statuses.count(201) == admitted
    assert statuses.count(429) == 200 - admitted
    assert read_budget(admin, b["id"])["reservedMicrodollars"] == admitted * 1_000


def test_expired_reservations_are_settled_at_their_estimate(database_url: str) -> None:
    server = start_server(database_url, reservation_ttl_seconds=1, heartbeat_seconds=0.2)
    try:
        with server.client() as admin:
            b = org_budget(admin, 100_000)
            reserve(admin, 25_000, model="gpt-4o", provider="openai")
            deadline = time.monotonic() + 15
            while read_budget(admin, b["id"])["spendMicrodollars"] == 0:
                assert time.monotonic() < deadline, "the expired reservation was not settled"
                time.sleep(0.2)
            state = read_budget(admin, b["id"])
    finally:
        server.stop()
    assert (state["spendMicrodollars"], state["reservedMicrodollars"]) == (25_000, 0)
    tags = {r["key"] for r in rows(database_url, "SELECT key FROM cost_event_tags")}
    assert {"_ns_estimated", "_ns_expired"} <= tags


def test_an_extended_reservation_outlives_its_ttl_and_takes_its_settle(database_url: str) -> None:
    """A call still going (a stream longer than the TTL) extends its reservation: it is not
    charged its estimate at the TTL, and its real settle is taken. A finished reservation is
    not extended (409, with its status); an unknown one is a 404."""
    server = start_server(database_url, reservation_ttl_seconds=1, heartbeat_seconds=0.2)
    try:
        with server.client() as admin:
            b = org_budget(admin, 100_000)
            reserved = reserve(admin, 25_000, model="gpt-4o", provider="openai").json()["data"]
            rid = reserved["reservationId"]
            first_expiry = dt.datetime.fromisoformat(reserved["expiresAt"])
            started = time.monotonic()
            while time.monotonic() - started < 2.5:  # twice the TTL and more
                extended = admin.post(f"/api/reservations/{rid}/extend")
                assert extended.status_code == 200, extended.text
                time.sleep(0.3)
            expiry = dt.datetime.fromisoformat(extended.json()["data"]["expiresAt"])
            assert expiry - first_expiry > dt.timedelta(seconds=2)
            assert read_budget(admin, b["id"])["spendMicrodollars"] == 0  # still reserved
            settled = admin.post(f"/api/reservations/{rid}/settle", json={"costMicrodollars": 7})
            assert settled.status_code == 200, settled.text
            state = read_budget(admin, b["id"])
            finished = admin.post(f"/api/reservations/{rid}/extend")
            assert finished.status_code == 409
            assert finished.json()["error"]["details"]["status"] == "settled"
            assert admin.post("/api/reservations/rsv_missing/extend").status_code == 404
    finally:
        server.stop()
    assert (state["spendMicrodollars"], state["reservedMicrodollars"]) == (7, 0)
    assert not rows(database_url, "SELECT key FROM cost_event_tags")  # not _ns_expired


def test_a_reserve_that_lands_after_its_clients_release_is_refused(
    admin: httpx.Client,
) -> None:
    """A client whose reserve got no answer releases its id in the background; a 404 said the
    reserve was never made. When the reserve was only slow, it landed after: held unused for
    the TTL, then charged its estimate (50,340 µ$ for five calls never made, in a bug hunt).
    The release of an id of the client's making keeps it as released, so the late reserve is
    refused."""
    b = org_budget(admin, 1_000_000)
    late = "rsv_" + "c" * 32
    released = admin.delete(f"/api/reservations/{late}")
    assert released.json()["data"]["status"] == "released"
    refused = reserve(admin, 40_000, reservationId=late)
    assert refused.status_code == 409
    assert read_budget(admin, b["id"])["reservedMicrodollars"] == 0
    assert admin.delete("/api/reservations/rsv_missing").status_code == 404  # not a client's id
    assert admin.delete(f"/api/reservations/{late}").status_code == 409  # released already


def test_the_sweep_leaves_a_reservation_extended_after_it_was_picked(database_url: str) -> None:
    """The expiry sweep picks what is past its expiry, then settles each in a transaction of
    its own: a stream's extension landing between the two was answered 200, and the sweep
    charged the reservation its estimate all the same (its real settle then refused 409)."""
    server = start_server(database_url, reservation_ttl_seconds=1, heartbeat_seconds=3600)
    try:
        with server.client() as admin:
            rid = reserve(admin, 25_000).json()["data"]["reservationId"]
            time.sleep(1.2)  # past its expiry; this server's own sweep waits an hour
            assert admin.post(f"/api/reservations/{rid}/extend").status_code == 200

            async def sweep_it_as_picked() -> bool:
                db = Database(database_url)
                try:
                    async with db.write_transaction() as tx:
                        return await settle_abandoned(tx, rid, TAG_EXPIRED, utcnow())
                finally:
                    await db.dispose()

            assert asyncio.run(sweep_it_as_picked()) is False
            settled = admin.post(f"/api/reservations/{rid}/settle", json={"costMicrodollars": 7})
            assert settled.status_code == 200, settled.text
    finally:
        server.stop()


def test_a_reserve_sent_again_under_its_id_answers_the_reservation_it_made(
    server: RunningServer, admin: httpx.Client
) -> None:
    """A client whose reserve lost its answer sends it again under the id it chose: it gets
    the reservation made, counted once, even when the two tries arrive together."""
    b = org_budget(admin, 1_000_000)
    chosen = "rsv_" + "a" * 32
    first = reserve(admin, 40_000, reservationId=chosen)
    again = reserve(admin, 40_000, reservationId=chosen)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["data"]["reservationId"] == again.json()["data"]["reservationId"] == chosen
    assert read_budget(admin, b["id"])["reservedMicrodollars"] == 40_000
    assert admin.delete(f"/api/reservations/{chosen}").status_code == 200
    assert reserve(admin, 40_000, reservationId=chosen).status_code == 409  # finished
    assert reserve(admin, 1, reservationId="rsv_short").status_code == 400

    async def together() -> list[httpx.Response]:
        async with server.async_client() as client:
            return await asyncio.gather(
                *(reserve_async(client, 1_000, reservationId="rsv_" + "b" * 32) for _ in range(8))
            )

    answers = asyncio.run(together())
    assert sorted(a.status_code for a in answers) == [200] * 7 + [201]
    assert read_budget(admin, b["id"])["reservedMicrodollars"] == 1_000


def test_another_request_under_a_reservations_id_is_refused(
    server: RunningServer, admin: httpx.Client
) -> None:
    """A reserve under an id already used answered the reservation made, whatever it asked:
    an estimate of 5,000,000 against a budget with 960,000 left was answered 200 "admitted"
    with estimateMicrodollars 5,000,000, holding 40,000; another key's (whose own budget is
    spent) was admitted as well. Neither was checked against a budget: each is a 409."""
    b = org_budget(admin, 1_000_000)
    chosen = "rsv_" + "c" * 32
    assert reserve(admin, 40_000, reservationId=chosen).status_code == 201
    other_key = server.new_key()
    with server.client(other_key) as other:
        key_id = other.get("/api/auth/introspect").json()["data"]["keyId"]
        spent = {"entityType": "api_key", "entityId": key_id, "limitMicrodollars": 1}
        assert admin.post("/api/budgets", json=spent).status_code == 201
        assert reserve(other, 40_000, reservationId=chosen).status_code == 409
    for changed in (
        {"estimateMicrodollars": 5_000_000},
        {"customer": "acme"},
        {"sessionId": "run-1"},
        {"tags": {"team": "ml"}},
        {"model": "gpt-4o"},
    ):
        answer = admin.post(
            "/api/reservations",
            json={"estimateMicrodollars": 40_000, "reservationId": chosen, **changed},
        )
        assert answer.status_code == 409, (changed, answer.text)
        assert answer.json()["error"]["code"] == "conflict"
    assert read_budget(admin, b["id"])["reservedMicrodollars"] == 40_000
    assert reserve(admin, 40_000, reservationId=chosen).status_code == 200  # the same again


async def reserve_async(client: httpx.AsyncClient, estimate: int, **fields: Any) -> httpx.Response:
    return await client.post("/api/reservations", json={"estimateMicrodollars": estimate, **fields})
