"""Cost events: ingest, idempotency, batches, listing, summary, attribution, CSV."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
from typing import Any

import httpx
import pytest

from nullspend_server.accounts import create_key, create_organization
from nullspend_server.api.event_queries import encode_cursor
from nullspend_server.db.database import Database
from tests.nullspend_server.conftest import RunningServer
from tests.nullspend_server.dbtools import execute, rows

EVENT = {
    "provider": "openai",
    "model": "gpt-4o",
    "inputTokens": 1000,
    "outputTokens": 100,
    "costMicrodollars": 3_500,
}


def ingest(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post("/api/cost-events", json={**EVENT, **fields})


def test_ingest_and_list(admin: httpx.Client) -> None:
    created = ingest(
        admin,
        tags={"team": "ml"},
        customer="acme",
        sessionId="s-1",
        traceId="a" * 32,
        durationMs=120,
    )
    assert created.status_code == 201, created.text
    data = created.json()["data"]
    assert data["id"].startswith("ce_")
    [event] = admin.get("/api/cost-events").json()["data"]
    assert event["id"] == data["id"]
    assert event["source"] == "api"
    assert event["costMicrodollars"] == 3_500
    assert event["tags"] == {"team": "ml", "customer": "acme"}
    assert (event["sessionId"], event["durationMs"]) == ("s-1", 120)


def test_usage_without_cost_is_priced_by_the_server(admin: httpx.Client) -> None:
    body = {
        "provider": "anthropic",
        "model": "claude-sonnet-4",
        "inputTokens": 1_000,
        "cachedInputTokens": 150_000,
        "outputTokens": 2_000,
    }
    created = admin.post("/api/cost-events", json=body).json()["data"]
    # inputTokens is uncached: 1000 x $3 + 150000 x $0.30 + 2000 x $15 per million
    assert created["costMicrodollars"] == 78_000
    unknown = admin.post("/api/cost-events", json={**body, "model": "acme-private"})
    assert unknown.status_code == 400
    assert "costMicrodollars" in unknown.json()["error"]["message"]


def test_default_tags_merge_under_event_tags(server: RunningServer) -> None:
    key = server.new_key("member", defaultTags={"team": "ml", "env": "prod"})
    with server.client(key) as member:
        ingest(member, tags={"env": "staging"})
        [event] = member.get("/api/cost-events").json()["data"]
    assert event["tags"] == {"team": "ml", "env": "staging"}


def test_reported_calls_count_against_their_budgets_and_session(
    server: RunningServer, admin: httpx.Client
) -> None:
    """A reported call counts against the budgets its key, customer and tags fall under, and
    in its session, as a settled one does (and as embedded mode counts it). The server recorded
    it and counted nothing: an app that reports its calls was capped in a notebook and never
    in production."""

    def new_budget(**fields: Any) -> str:
        created = admin.post("/api/budgets", json={"limitMicrodollars": 10_000, **fields})
        assert created.status_code == 201, created.text
        return str(created.json()["data"]["id"])

    def spend(budget_id: str) -> int:
        return int(admin.get(f"/api/budgets/{budget_id}").json()["data"]["spendMicrodollars"])

    total = new_budget(entityType="user", sessionLimitMicrodollars=5_000)
    acme = new_budget(entityType="customer", entityId="acme")
    ml = new_budget(entityType="tag", entityId="team=ml")
    as_tag = new_budget(entityType="tag", entityId="customer=acme")
    other = new_budget(entityType="customer", entityId="globex")
    assert ingest(admin, customer="acme", sessionId="s-1").status_code == 201  # 3,500
    batch = [{**EVENT, "tags": {"team": "ml"}, "sessionId": "s-1"}, {**EVENT, "customer": "acme"}]
    assert admin.post("/api/cost-events/batch", json={"events": batch}).status_code == 201
    spent = {name: spend(b) for name, b in [("total", total), ("acme", acme), ("ml", ml)]}
    assert spent == {"total": 10_500, "acme": 7_000, "ml": 3_500}
    assert (spend(as_tag), spend(other)) == (7_000, 0)
    # 10,500 reported in all, 7,000 of it in session s-1: over the total, at the session limit
    assert admin.post("/api/cost-events", json=EVENT).status_code == 201  # never refused
    refused = admin.post("/api/reservations", json={"estimateMicrodollars": 1})
    assert refused.json()["error"]["code"] == "budget_exceeded"
    admin.patch(f"/api/budgets/{total}", json={"limitMicrodollars": 10**9})
    in_session = {"estimateMicrodollars": 1, "sessionId": "s-1"}
    refused = admin.post("/api/reservations", json=in_session)
    assert refused.json()["error"]["details"]["session_spend_microdollars"] == 7_000


def test_a_spend_that_reaches_the_most_a_bigint_holds_stays_there(
    server: RunningServer, admin: httpx.Client
) -> None:
    """A call's cost is capped (10^15 µ$), a spend that never resets is not: 9,223 calls at
    that most overflowed a budget's spend. PostgreSQL then refused the next reported call (400,
    its cost lost) and every settle (the reservation left active for good); SQLite kept a REAL
    and the budget reads answered 500. The spend now stays at the most, and the calls count."""
    most = 2**63 - 1
    budget = {"entityType": "user", "limitMicrodollars": most, "resetInterval": "none"}
    created = admin.post("/api/budgets", json={**budget, "policy": "warn"})
    budget_id = created.json()["data"]["id"]
    execute(server.database_url, "UPDATE budgets SET spend_microdollars = :s", s=most - 10)
    assert ingest(admin, sessionId="s-1").status_code == 201
    execute(server.database_url, "UPDATE session_spend SET spend_microdollars = :s", s=most - 10)
    made = admin.post(
        "/api/reservations", json={"estimateMicrodollars": 10**15, "sessionId": "s-1"}
    )
    assert made.status_code == 201, made.text
    settle = f"/api/reservations/{made.json()['data']['reservationId']}/settle"
    settled = admin.post(settle, json={"costMicrodollars": 10**15})
    assert settled.status_code == 200, settled.text
    read = admin.get(f"/api/budgets/{budget_id}")
    assert read.status_code == 200, read.text
    assert (
        read.json()["data"]["spendMicrodollars"],
        read.json()["data"]["reservedMicrodollars"],
    ) == (most, 0)
    [session] = rows(server.database_url, "SELECT spend_microdollars FROM session_spend")
    assert session["spend_microdollars"] == most


def test_idempotency_key(admin: httpx.Client) -> None:
    headers = {"Idempotency-Key": "retry-1"}
    first = admin.post("/api/cost-events", json=EVENT, headers=headers)
    again = admin.post("/api/cost-events", json=EVENT, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["data"]["id"] == first.json()["data"]["id"]
    assert len(admin.get("/api/cost-events").json()["data"]) == 1
    other = admin.post("/api/cost-events", json={**EVENT, "costMicrodollars": 1}, headers=headers)
    assert other.status_code == 409


def test_concurrent_retries_with_one_idempotency_key_store_one_event(
    server: RunningServer, admin: httpx.Client
) -> None:
    async def burst() -> list[int]:
        async with server.async_client() as client:
            responses = await asyncio.gather(
                *(
                    client.post("/api/cost-events", json=EVENT, headers={"Idempotency-Key": "k"})
                    for _ in range(20)
                )
            )
        return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    assert statuses.count(201) == 1
    assert statuses.count(200) == 19
    assert len(admin.get("/api/cost-events").json()["data"]) == 1


def test_ingests_with_idempotency_keys_at_once_never_starve_the_pool(
    small_pool_server: RunningServer,
) -> None:
    """An ingest with an Idempotency-Key looks for an earlier one first. Read on a second
    connection while the request held its writing one, ingests arriving together each held one
    and waited for another until the pool ran out. Eight events and four batches at once, the
    same key sent twice, on a pool of two."""
    server = small_pool_server

    async def run() -> list[httpx.Response]:
        async with server.async_client() as client:
            return await asyncio.gather(
                *(
                    client.post("/api/cost-events", json=EVENT, headers={"Idempotency-Key": k})
                    for k in ("a", "b", "c", "d", "e", "f", "g", "a")
                ),
                *(
                    client.post(
                        "/api/cost-events/batch",
                        json={"events": [EVENT] * 3},
                        headers={"Idempotency-Key": k},
                    )
                    for k in ("b1", "b2", "b3", "b1")
                ),
            )

    answers = asyncio.run(run())
    assert sorted(a.status_code for a in answers) == [200] * 2 + [201] * 10, answers[0].text
    with server.client() as admin:
        assert len(admin.get("/api/cost-events", params={"limit": 100}).json()["data"]) == 7 + 9


def test_batch_is_all_or_nothing(admin: httpx.Client) -> None:
    ok = admin.post("/api/cost-events/batch", json={"events": [EVENT] * 100})
    assert ok.status_code == 201
    assert ok.json()["inserted"] == 100
    assert len(set(ok.json()["ids"])) == 100
    bad = admin.post(
        "/api/cost-events/batch",
        json={
            "events": [EVENT, {**EVENT, "costMicrodollars": None, "model": "acme-private"}, EVENT]
        },
    )
    assert bad.status_code == 400
    assert bad.json()["error"]["details"]["errors"] == [
        {
            "index": 1,
            "message": "model 'acme-private' is not in the pricing catalog: send costMicrodollars",
        }
    ]
    typed = admin.post(
        "/api/cost-events/batch", json={"events": [EVENT, {**EVENT, "inputTokens": -1}]}
    )
    assert typed.status_code == 400
    assert typed.json()["error"]["details"]["errors"][0]["location"].startswith("body.events.1")
    assert admin.post("/api/cost-events/batch", json={"events": [EVENT] * 101}).status_code == 400
    total = admin.get("/api/cost-events/summary").json()["data"]["requestCount"]
    assert total == 100  # nothing of the failed batches was stored


@pytest.mark.parametrize(
    "body",
    [
        {**EVENT, "inputTokens": -5},
        {**EVENT, "inputTokens": "5"},
        {**EVENT, "costMicrodollars": 1.5},
        {**EVENT, "costMicrodollars": 2**63},
        {**EVENT, "tags": {"_ns_x": "1"}},
        {**EVENT, "tags": {"bad key": "1"}},
        {**EVENT, "surprise": True},
        {**EVENT, "outputTokens": 10, "reasoningTokens": 11},
        {"model": "gpt-4o"},
        [EVENT],
    ],
)
def test_ingest_validation(admin: httpx.Client, body: Any) -> None:
    response = admin.post("/api/cost-events", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_viewer_cannot_ingest(server: RunningServer) -> None:
    with server.client(server.new_key("viewer")) as viewer:
        assert ingest(viewer).status_code == 403
        assert viewer.get("/api/cost-events").status_code == 200


def test_filters(admin: httpx.Client) -> None:
    ingest(admin, provider="openai", tags={"team": "ml"}, customer="acme")
    ingest(admin, provider="anthropic", model="claude-sonnet-4", tags={"team": "search"})
    ingest(admin, provider="openai", tags={"team": "search", "feature": "chat"})

    def count(**params: str) -> int:
        response = admin.get("/api/cost-events", params=params)
        assert response.status_code == 200, response.text
        return len(response.json()["data"])

    assert count(provider="openai") == 2
    assert count(**{"tag.team": "search"}) == 2
    assert count(**{"tag.team": "search", "tag.feature": "chat"}) == 1
    assert count(customer="acme") == 1
    assert count(model="claude-sonnet-4") == 1
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    assert count(**{"from": future}) == 0
    assert count(to=future) == 3


@pytest.mark.parametrize(
    "params",
    [
        {"providr": "openai"},
        {"cursor": "garbage"},
        # A position past what the seq column holds: a 500 on SQLite (an OverflowError)
        {"cursor": encode_cursor(2**63)},
        {"cursor": encode_cursor(10**30)},
        {"limit": "0"},
        {"limit": "201"},
        {"from": "yesterday"},
        {"tag._ns_x": "1"},
        {"period": "1y"},
    ],
)
def test_bad_list_parameters(admin: httpx.Client, params: dict[str, str]) -> None:
    response = admin.get("/api/cost-events", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_cursor_pages_stay_correct_while_events_arrive(admin: httpx.Client) -> None:
    ids = [ingest(admin, costMicrodollars=i).json()["data"]["id"] for i in range(25)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "10", **({"cursor": cursor} if cursor else {})}
        page = admin.get("/api/cost-events", params=params).json()
        seen += [event["id"] for event in page["data"]]
        ingest(admin, costMicrodollars=999)  # arrives mid-paging: must not shift the pages
        cursor = page["cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


def test_summary_and_attribution(admin: httpx.Client) -> None:
    ingest(admin, tags={"team": "ml"}, customer="acme", costMicrodollars=1_000)
    ingest(admin, tags={"team": "ml"}, customer="globex", costMicrodollars=2_000)
    ingest(
        admin,
        provider="anthropic",
        model="claude-sonnet-4",
        tags={"team": "search"},
        costMicrodollars=4_000,
    )
    summary = admin.get("/api/cost-events/summary", params={"period": "7d"}).json()["data"]
    assert (summary["totalCostMicrodollars"], summary["requestCount"]) == (7_000, 3)
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert summary["byDay"] == [{"date": today, "costMicrodollars": 7_000, "requestCount": 3}]
    assert summary["byModel"][0] == {
        "key": "claude-sonnet-4",
        "totalCostMicrodollars": 4_000,
        "requestCount": 1,
    }
    assert {g["key"]: g["totalCostMicrodollars"] for g in summary["byProvider"]} == {
        "anthropic": 4_000,
        "openai": 3_000,
    }
    by_team = admin.get("/api/cost-events/attribution", params={"groupBy": "team"}).json()
    assert by_team["data"] == [
        {"key": "search", "totalCostMicrodollars": 4_000, "requestCount": 1},
        {"key": "ml", "totalCostMicrodollars": 3_000, "requestCount": 2},
    ]
    by_customer = admin.get("/api/cost-events/attribution", params={"groupBy": "customer"}).json()
    assert {g["key"]: g["totalCostMicrodollars"] for g in by_customer["data"]} == {
        "acme": 1_000,
        "globex": 2_000,
        None: 4_000,
    }
    detail = admin.get("/api/cost-events/attribution/ml", params={"groupBy": "team"}).json()["data"]
    assert detail["totalCostMicrodollars"] == 3_000
    assert detail["daily"] == [{"date": today, "costMicrodollars": 3_000, "requestCount": 2}]
    for bad in ({}, {"groupBy": "bad key!"}, {"groupBy": "team", "period": "2d"}):
        assert admin.get("/api/cost-events/attribution", params=bad).status_code == 400


def test_totals_past_what_a_bigint_holds_are_exact(
    server: RunningServer, admin: httpx.Client
) -> None:
    """9,223 calls at one call's most (10^15 µ$) sum past a BIGINT: SQLite's sum() refused
    ("integer overflow") and every summary and attribution of the period answered 503
    budget_unavailable. Shown with three events of 2^62 µ$ each, written straight in."""
    for _ in range(3):
        ingest(admin, tags={"team": "ml"})
    execute(server.database_url, "UPDATE cost_events SET cost_microdollars = :c", c=2**62)
    total = 3 * 2**62  # past 2^63 - 1, exact
    summary = admin.get("/api/cost-events/summary")
    assert summary.status_code == 200, summary.text
    assert summary.json()["data"]["totalCostMicrodollars"] == total
    assert summary.json()["data"]["byDay"][0]["costMicrodollars"] == total
    by_team = admin.get("/api/cost-events/attribution", params={"groupBy": "team"})
    assert by_team.json()["data"] == [
        {"key": "ml", "totalCostMicrodollars": total, "requestCount": 3}
    ]
    csv_body = admin.get("/api/cost-events/attribution.csv", params={"groupBy": "team"}).text
    assert csv_body.splitlines()[1] == f"ml,{total},3"
    detail = admin.get("/api/cost-events/attribution/ml", params={"groupBy": "team"})
    assert detail.json()["data"]["totalCostMicrodollars"] == total


def test_every_group_an_attribution_lists_has_its_detail(admin: httpx.Client) -> None:
    """A group's key is any model name or tag value: OpenRouter's and Bedrock's model names
    hold a '/', a tag value may too, or be empty. Their details answered 404 (no route took a
    '/', or an empty value) for groups the attribution itself listed."""
    ingest(admin, model="openai/gpt-4o", tags={"path": "a/b", "empty": ""}, costMicrodollars=5)
    for group_by, value in (("model", "openai%2Fgpt-4o"), ("path", "a/b"), ("empty", "")):
        [group] = admin.get("/api/cost-events/attribution", params={"groupBy": group_by}).json()[
            "data"
        ]
        detail = admin.get(f"/api/cost-events/attribution/{value}", params={"groupBy": group_by})
        assert detail.status_code == 200, detail.text
        assert detail.json()["data"]["key"] == group["key"]
        assert detail.json()["data"]["totalCostMicrodollars"] == 5


def test_csv_exports(admin: httpx.Client) -> None:
    for i in range(3):
        ingest(admin, costMicrodollars=100 * (i + 1), tags={"team": "ml"})
    export = admin.get("/api/cost-events/export.csv", params={"tag.team": "ml"})
    assert export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["costMicrodollars"] for r in rows] == ["300", "200", "100"]
    groups = admin.get("/api/cost-events/attribution.csv", params={"groupBy": "team"})
    assert list(csv.reader(io.StringIO(groups.text))) == [
        ["team", "total_cost_microdollars", "request_count"],
        ["ml", "600", "3"],
    ]


async def _other_org_key(database_url: str) -> str:
    db = Database(database_url)
    try:
        async with db.write_session() as session:
            org = await create_organization(session, "other")
            _, key = await create_key(session, org.id, "other-admin", "admin")
            await session.commit()
            return key
    finally:
        await db.dispose()


def test_organizations_are_isolated(server: RunningServer, admin: httpx.Client) -> None:
    other_key = asyncio.run(_other_org_key(server.database_url))
    ingest(admin, tags={"team": "ml"})
    with server.client(other_key) as other:
        ingest(other, costMicrodollars=9)
        assert [e["costMicrodollars"] for e in other.get("/api/cost-events").json()["data"]] == [9]
        assert other.get("/api/cost-events/summary").json()["data"]["totalCostMicrodollars"] == 9
        assert (
            other.get("/api/cost-events/attribution", params={"groupBy": "team"}).json()["data"]
            == []
        )
    assert [e["costMicrodollars"] for e in admin.get("/api/cost-events").json()["data"]] == [3_500]


def test_a_body_hashes_as_it_did_before_the_fields_added_since() -> None:
    """An event recorded before an upgrade and retried after it (a rolling deploy retries)
    must match the hash its Idempotency-Key was stored with: these are what the server hashed
    before ``serviceTier`` existed (at a21a843). Given, the field counts."""
    from nullspend_server.api.cost_events import Batch, CostEventIn, _hash

    body = {
        "provider": "openai",
        "model": "gpt-4o-mini",
        "inputTokens": 1000,
        "outputTokens": 20,
        "tags": {"team": "ml"},
    }
    single = CostEventIn.model_validate(body)
    batch = Batch.model_validate({"events": [body, {**body, "model": "gpt-5"}]})
    assert _hash(single) == "2a44edc43ae731fb389feb10708917a21b438850021e164c6e2f5a9a2dbc71d1"
    assert _hash(batch) == "ba451ae5b14bd1135a0e4dc2ab895c696b41d6e3183354ba20dee7dd4c19ebe0"
    assert _hash(CostEventIn.model_validate({**body, "serviceTier": "priority"})) != _hash(single)
