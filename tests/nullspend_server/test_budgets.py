"""Budgets: CRUD, validation, and status with lazy period resets."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import httpx
import pytest

from tests.nullspend_server.conftest import RunningServer
from tests.nullspend_server.dbtools import execute, rows
from tests.nullspend_server.test_cost_events import _other_org_key

STATUS_FIELDS = {
    "entityType",
    "entityId",
    "limitMicrodollars",
    "spendMicrodollars",
    "reservedMicrodollars",
    "remainingMicrodollars",
    "policy",
    "resetInterval",
    "currentPeriodStart",
}
BUDGET_FIELDS = STATUS_FIELDS | {
    "id",
    "thresholdPercentages",
    "velocityLimitMicrodollars",
    "windowSeconds",
    "cooldownSeconds",
    "sessionLimitMicrodollars",
    "upgradeUrl",
    "createdAt",
    "updatedAt",
}


def create(client: httpx.Client, **fields: Any) -> httpx.Response:
    return client.post(
        "/api/budgets", json={"entityType": "user", "limitMicrodollars": 5_000_000, **fields}
    )


def created(client: httpx.Client, **fields: Any) -> dict[str, Any]:
    response = create(client, **fields)
    assert response.status_code == 201, response.text
    budget: dict[str, Any] = response.json()["data"]
    return budget


def org_id(client: httpx.Client) -> str:
    return str(client.get("/api/auth/introspect").json()["data"]["orgId"])


def month_start(now: dt.datetime) -> dt.datetime:
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def test_defaults(admin: httpx.Client) -> None:
    budget = created(admin)
    assert set(budget) == BUDGET_FIELDS
    assert budget["id"].startswith("bgt_")
    assert budget["entityId"] == org_id(admin)  # a user budget is the organization's
    assert {k: budget[k] for k in BUDGET_FIELDS - {"id", "entityId", "createdAt", "updatedAt"}} == {
        "entityType": "user",
        "limitMicrodollars": 5_000_000,
        "spendMicrodollars": 0,
        "reservedMicrodollars": 0,
        "remainingMicrodollars": 5_000_000,
        "policy": "strict_block",
        "resetInterval": "monthly",
        "currentPeriodStart": budget["currentPeriodStart"],
        "thresholdPercentages": [50, 80, 90, 95],
        "velocityLimitMicrodollars": None,
        "windowSeconds": 60,
        "cooldownSeconds": 60,
        "sessionLimitMicrodollars": None,
        "upgradeUrl": None,
    }
    start = dt.datetime.fromisoformat(budget["currentPeriodStart"])
    assert start == month_start(dt.datetime.now(dt.UTC))
    assert budget["createdAt"] == budget["updatedAt"]


def test_create_read_update_delete(admin: httpx.Client) -> None:
    budget = created(
        admin,
        entityId=org_id(admin),
        limitMicrodollars=2**63 - 1,  # the largest amount a BIGINT holds
        policy="warn",
        resetInterval="weekly",
        thresholdPercentages=[90, 50],
        velocityLimitMicrodollars=1_000,
        windowSeconds=10,
        cooldownSeconds=3600,
        sessionLimitMicrodollars=500,
        upgradeUrl="https://example.com/billing/{customer_id}?plan=pro",
    )
    assert budget["thresholdPercentages"] == [50, 90]
    assert (budget["windowSeconds"], budget["cooldownSeconds"]) == (10, 3600)
    assert budget["upgradeUrl"] == "https://example.com/billing/{customer_id}?plan=pro"
    monday = dt.datetime.fromisoformat(budget["currentPeriodStart"])
    assert (monday.weekday(), monday.hour, monday.minute) == (0, 0, 0)
    assert admin.get(f"/api/budgets/{budget['id']}").json()["data"] == budget
    assert admin.get("/api/budgets").json()["data"] == [budget]

    assert admin.delete(f"/api/budgets/{budget['id']}").json()["data"]["id"] == budget["id"]
    for method in ("GET", "PATCH", "DELETE"):
        gone = admin.request(method, f"/api/budgets/{budget['id']}", json={})
        assert gone.status_code == 404, method
        assert gone.json()["error"]["code"] == "not_found"
    assert admin.get("/api/budgets").json()["data"] == []


def test_partial_update(admin: httpx.Client) -> None:
    budget = created(
        admin,
        policy="soft_block",
        velocityLimitMicrodollars=1_000,
        sessionLimitMicrodollars=500,
        upgradeUrl="https://example.com/up",
    )
    path = f"/api/budgets/{budget['id']}"
    raised = admin.patch(path, json={"limitMicrodollars": 9_000_000}).json()["data"]
    assert raised["limitMicrodollars"] == 9_000_000
    assert raised["remainingMicrodollars"] == 9_000_000
    assert raised["policy"] == "soft_block"  # what a PATCH omits stays as it was
    assert raised["updatedAt"] > budget["updatedAt"]

    cleared = admin.patch(
        path,
        json={
            "velocityLimitMicrodollars": None,
            "sessionLimitMicrodollars": None,
            "upgradeUrl": None,
        },
    ).json()["data"]
    assert (cleared["velocityLimitMicrodollars"], cleared["sessionLimitMicrodollars"]) == (
        None,
        None,
    )
    assert cleared["upgradeUrl"] is None

    daily = admin.patch(path, json={"resetInterval": "daily"}).json()["data"]
    today = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert dt.datetime.fromisoformat(daily["currentPeriodStart"]) == today
    none = admin.patch(path, json={"resetInterval": "none"}).json()["data"]
    assert none["currentPeriodStart"] is None

    assert admin.patch(path, json={}).json()["data"]["limitMicrodollars"] == 9_000_000


@pytest.mark.parametrize(
    "body",
    [
        {"entityType": "tag"},
        {"entityId": "org_other"},
        {"limitMicrodollars": None},  # only the optional limits and the URL can be removed
        {"policy": None},
        {"resetInterval": None},
        {"thresholdPercentages": None},
        {"windowSeconds": None},
        {"limitMicrodollars": -5},
        {"windowSeconds": 9},
    ],
)
def test_invalid_changes(admin: httpx.Client, body: dict[str, Any]) -> None:
    budget = created(admin)
    response = admin.patch(f"/api/budgets/{budget['id']}", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"
    assert admin.get(f"/api/budgets/{budget['id']}").json()["data"] == budget


def test_entities(admin: httpx.Client) -> None:
    key_id = admin.get("/api/auth/introspect").json()["data"]["keyId"]
    made = {
        (b["entityType"], b["entityId"])
        for b in (
            created(admin, entityType="api_key", entityId=key_id),
            created(admin, entityType="customer", entityId="acme:eu-1.prod_2"),
            created(admin, entityType="tag", entityId="team=ml"),
            created(admin, entityType="tag", entityId="team=ml=ops"),  # split at the first =
            created(admin, entityType="tag", entityId="team="),  # the empty value is a value
            created(admin, entityType="tag", entityId="note=" + "é " * 128),
        )
    }
    assert made == {
        (b["entityType"], b["entityId"]) for b in admin.get("/api/budgets").json()["data"]
    }
    duplicate = create(admin, entityType="tag", entityId="team=ml", limitMicrodollars=1)
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["code"] == "conflict"
    assert duplicate.json()["error"]["details"] == {"entityType": "tag", "entityId": "team=ml"}
    created(admin)
    assert create(admin).status_code == 409  # one organization budget per organization


def test_budgets_of_another_organization(server: RunningServer, admin: httpx.Client) -> None:
    other_key = asyncio.run(_other_org_key(server.database_url))
    with server.client(other_key) as other:
        other_key_id = other.get("/api/auth/introspect").json()["data"]["keyId"]
        mine = created(other, entityType="tag", entityId="team=ml")
    refused = create(admin, entityType="api_key", entityId=other_key_id)
    assert refused.status_code == 400
    assert refused.json()["error"]["details"] == {"field": "entityId"}
    theirs = created(admin, entityType="tag", entityId="team=ml")  # the same entity, its own
    assert theirs["id"] != mine["id"]


TOO_LONG_URL = "https://example.com/" + "a" * 1981


@pytest.mark.parametrize(
    "fields",
    [
        {"entityType": "team"},
        {"entityType": None},
        {"entityType": "api_key"},
        {"entityType": "api_key", "entityId": "key_not_ours"},
        {"entityType": "api_key", "entityId": "key\x00"},
        {"entityType": "user", "entityId": "org_someone_else"},
        {"entityType": "customer"},
        {"entityType": "customer", "entityId": "no spaces"},
        {"entityType": "customer", "entityId": "c" * 257},
        {"entityType": "customer", "entityId": ""},
        {"entityType": "tag", "entityId": "novalue"},
        {"entityType": "tag", "entityId": "=value"},
        {"entityType": "tag", "entityId": "_ns_estimated=1"},
        {"entityType": "tag", "entityId": "bad key=1"},
        {"entityType": "tag", "entityId": "k" * 65 + "=1"},
        {"entityType": "tag", "entityId": "team=" + "v" * 257},
        {"entityType": "tag", "entityId": "team=a\x00b"},
        {"entityType": "tag", "entityId": 7},
        {"limitMicrodollars": None},
        {"limitMicrodollars": -1},
        {"limitMicrodollars": "100"},
        {"limitMicrodollars": 1.5},
        {"limitMicrodollars": 100.0},
        {"limitMicrodollars": True},
        {"limitMicrodollars": 2**63},
        {"limitMicrodollars": 10**30},
        {"policy": "block"},
        {"policy": None},
        {"resetInterval": "hourly"},
        {"thresholdPercentages": [50, 50]},
        {"thresholdPercentages": [0]},
        {"thresholdPercentages": [101]},
        {"thresholdPercentages": ["50"]},
        {"thresholdPercentages": 50},
        {"windowSeconds": 9},
        {"windowSeconds": 3601},
        {"cooldownSeconds": 3601},
        {"cooldownSeconds": 0},
        {"velocityLimitMicrodollars": 0},
        {"velocityLimitMicrodollars": 2**63},
        {"sessionLimitMicrodollars": 0},
        {"sessionLimitMicrodollars": -1},
        {"upgradeUrl": "javascript:alert(1)"},
        {"upgradeUrl": "ftp://example.com/up"},
        {"upgradeUrl": "https://"},
        {"upgradeUrl": "https://example.com/a b"},
        {"upgradeUrl": "https://example.com/\u00fc"},
        {"upgradeUrl": TOO_LONG_URL},
        {"upgradeUrl": 5},
        {"colour": "red"},
        {"entity_type": "user"},
        {"spendMicrodollars": 0},
        {"id": "bgt_mine"},
    ],
)
def test_validation(admin: httpx.Client, fields: dict[str, Any]) -> None:
    response = create(admin, **fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"]
    assert admin.get("/api/budgets").json()["data"] == []


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{bad", "application/json"),
        (b"", "application/json"),
        (b"[]", "application/json"),
        (b'"user"', "application/json"),
        (b"null", "application/json"),
        (b'{"entityType": "user", "limitMicrodollars": 1e400}', "application/json"),
        (b"\xff\xfe", "application/json"),
    ],
)
def test_malformed_bodies(admin: httpx.Client, content: bytes, content_type: str) -> None:
    response = admin.post("/api/budgets", content=content, headers={"content-type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_ids_that_name_nothing(admin: httpx.Client) -> None:
    for budget_id in ("bgt_000000000000000000000000", "%00", "x" * 5000, "%F0%9F%92%B8"):
        for method in ("GET", "PATCH", "DELETE"):
            response = admin.request(method, f"/api/budgets/{budget_id}", json={})
            assert response.status_code == 404, (method, budget_id, response.text)


def _set_state(server: RunningServer, *, spend: int, period_start: dt.datetime | None) -> None:
    if period_start is not None and "sqlite" in server.database_url:
        period_start = period_start.astimezone(dt.UTC).replace(tzinfo=None)
    execute(
        server.database_url,
        "UPDATE budgets SET spend_microdollars = :spend, current_period_start = :start",
        spend=spend,
        start=period_start,
    )


def budgets_in(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The budgets in any read's answer: status entities, a list, or one budget."""
    if "entities" in body:
        return list(body["entities"])
    data = body["data"]
    return list(data) if isinstance(data, list) else [data]


@pytest.mark.parametrize(
    "read",
    [
        "GET /api/budgets/status",
        "GET /api/budgets",
        "GET /api/budgets/{id}",
        "PATCH /api/budgets/{id}",
    ],
)
def test_a_read_after_the_boundary_starts_the_new_period(
    server: RunningServer, admin: httpx.Client, read: str
) -> None:
    budget = created(admin, resetInterval="monthly")
    now = dt.datetime.now(dt.UTC)
    _set_state(server, spend=4_000_000, period_start=month_start(now) - dt.timedelta(days=31))
    method, path = read.split()
    response = admin.request(method, path.format(id=budget["id"]), json={})
    assert response.status_code == 200, response.text
    [seen] = budgets_in(response.json())
    assert seen["spendMicrodollars"] == 0
    assert seen["remainingMicrodollars"] == 5_000_000
    assert dt.datetime.fromisoformat(seen["currentPeriodStart"]) == month_start(now)
    # and it is stored: the new period has begun for enforcement too
    [row] = rows(server.database_url, "SELECT spend_microdollars FROM budgets")
    assert row["spend_microdollars"] == 0


def test_status(server: RunningServer, admin: httpx.Client) -> None:
    created(admin, limitMicrodollars=1_000)
    created(admin, entityType="customer", entityId="acme", resetInterval="none", policy="warn")
    execute(
        server.database_url,
        "UPDATE budgets SET spend_microdollars = 800, reserved_microdollars = 300",
    )
    entities = admin.get("/api/budgets/status").json()["entities"]
    assert all(set(entity) == STATUS_FIELDS for entity in entities)
    by_type = {entity["entityType"]: entity for entity in entities}
    assert by_type["user"]["remainingMicrodollars"] == 0  # 1000 - 800 - 300, floored at zero
    assert by_type["customer"] == {
        "entityType": "customer",
        "entityId": "acme",
        "limitMicrodollars": 5_000_000,
        "spendMicrodollars": 800,
        "reservedMicrodollars": 300,
        "remainingMicrodollars": 5_000_000 - 1_100,
        "policy": "warn",
        "resetInterval": "none",
        "currentPeriodStart": None,  # a budget that never resets has no period
    }


def test_reads_crossing_the_boundary_beside_enforcement(
    server: RunningServer, admin: httpx.Client
) -> None:
    """Reads start the new period while reservations settle in it: every request succeeds,
    and the reset never takes away spend that the new period already has."""
    created(admin, resetInterval="daily")
    _set_state(server, spend=700, period_start=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))

    async def spend(client: httpx.AsyncClient) -> None:
        reserved = await client.post("/api/reservations", json={"estimateMicrodollars": 9})
        assert reserved.status_code == 201, reserved.text
        reservation_id = reserved.json()["data"]["reservationId"]
        settle = f"/api/reservations/{reservation_id}/settle"
        settled = await client.post(settle, json={"costMicrodollars": 5})
        assert settled.status_code == 200, settled.text

    async def read(client: httpx.AsyncClient, path: str) -> None:
        response = await client.get(path)
        assert response.status_code == 200, response.text

    async def run() -> None:
        async with server.async_client() as client:
            reads = [
                read(client, p) for _ in range(10) for p in ("/api/budgets/status", "/api/budgets")
            ]
            await asyncio.gather(*reads[:10], *(spend(client) for _ in range(10)), *reads[10:])

    asyncio.run(run())
    [entity] = admin.get("/api/budgets/status").json()["entities"]
    assert (entity["spendMicrodollars"], entity["reservedMicrodollars"]) == (10 * 5, 0)


def test_many_reads_crossing_the_boundary_at_once_never_starve_the_pool(
    small_pool_server: RunningServer,
) -> None:
    """A read that starts a new period writes it in a second transaction. Holding its read
    connection meanwhile, reads crossing the boundary together each held one and waited for
    another until the pool ran out: every connection held, every request waiting, then 500s
    after the pool's timeout. Eight reads at once on a pool of two."""
    server = small_pool_server
    with server.client() as admin:
        created(admin, resetInterval="daily")
    _set_state(server, spend=700, period_start=dt.datetime.now(dt.UTC) - dt.timedelta(days=2))

    async def run() -> list[httpx.Response]:
        async with server.async_client() as client:
            return await asyncio.gather(*(client.get("/api/budgets/status") for _ in range(8)))

    answers = asyncio.run(run())
    assert [a.status_code for a in answers] == [200] * 8, answers[0].text
    assert {a.json()["entities"][0]["spendMicrodollars"] for a in answers} == {0}


def test_the_read_that_starts_a_period_keeps_spend_a_settle_adds_meanwhile(
    server: RunningServer, admin: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that crosses the boundary writes the new period. A settle that lands between the
    read's load of the rows and its commit must wait for it, not be overwritten by it: the
    read's ORM rows are flushed at commit, spend 0 included. Shown by a settle (one statement,
    as the engine's: reset if due, then add) sent while the read holds its rows."""
    if not server.database_url.startswith("postgresql"):
        pytest.skip("SQLite lets one writer at a time in: the race cannot happen there")
    import sqlalchemy as sa

    from nullspend_server import budgets

    created(admin, resetInterval="daily")
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    _set_state(server, spend=700, period_start=old)
    new = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    settle = sa.text(
        "UPDATE budgets SET spend_microdollars = 5 + CASE WHEN current_period_start < :new"
        " THEN 0 ELSE spend_microdollars END, current_period_start = :new"
    )
    engine = sa.create_engine(server.database_url)
    outcomes: list[str] = []

    def settle_now() -> None:
        with engine.begin() as connection:
            connection.execute(sa.text("SET LOCAL lock_timeout = '300ms'"))
            connection.execute(settle, {"new": new})

    def settle_meanwhile() -> None:
        try:
            settle_now()
            outcomes.append("settled during the read")
        except sa.exc.OperationalError:
            outcomes.append("waited for the read")

    reset = budgets.reset_due_periods

    async def reset_with_a_settle_meanwhile(db: Any, rows: Any, now: dt.datetime) -> Any:
        await asyncio.to_thread(settle_meanwhile)
        return await reset(db, rows, now)

    monkeypatch.setattr(budgets, "reset_due_periods", reset_with_a_settle_meanwhile)
    assert admin.get("/api/budgets/status").status_code == 200
    if outcomes == ["waited for the read"]:
        settle_now()
    engine.dispose()
    [entity] = admin.get("/api/budgets/status").json()["entities"]
    assert outcomes == ["waited for the read"]
    assert entity["spendMicrodollars"] == 5
