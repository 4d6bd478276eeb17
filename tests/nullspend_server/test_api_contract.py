"""The API as a whole: every route's role and organization rules, the OpenAPI description
against the implementation, and a schemathesis run that must find no server error."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from nullspend_server.app import API_MODULES
from nullspend_server.auth import RoleRequirement
from nullspend_server.keys import ROLES
from tests.nullspend_server.conftest import RunningServer
from tests.nullspend_server.test_cost_events import _other_org_key

API_ROUTES = [r for m in API_MODULES for r in m.router.routes if isinstance(r, APIRoute)]


def required_role(route: APIRoute) -> str:
    """The role a route declares through its Viewer / Member / Admin dependency."""
    roles = [
        d.call.role for d in route.dependant.dependencies if isinstance(d.call, RoleRequirement)
    ]
    assert len(roles) == 1, f"{route.path} declares no role"
    return roles[0]


CASES = [(route, method) for route in API_ROUTES for method in sorted(route.methods)]
IDS = [f"{method} {route.path}" for route, method in CASES]


def path_for(route: APIRoute, ids: dict[str, str]) -> str:
    return re.sub(r"{(\w+)}", lambda m: ids.get(m.group(1), "missing"), route.path_format)


# Valid bodies for the routes that act on an existing object, so that only ownership decides.
VALID_BODIES = {
    "/api/reservations/{reservation_id}/settle": {"costMicrodollars": 1},
    "/api/budgets/{budget_id}": {"limitMicrodollars": 1},
}


def call(client: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
    params = {"groupBy": "team"} if "attribution" in path else None
    if body is None and method in ("POST", "PATCH"):
        body = {}
    return client.request(method, path, json=body, params=params)


def test_every_api_route_declares_a_role() -> None:
    assert len(API_ROUTES) >= 20
    assert all(route.path.startswith("/api/") for route in API_ROUTES)
    assert {required_role(route) for route in API_ROUTES} == set(ROLES)


@pytest.mark.parametrize(("route", "method"), CASES, ids=IDS)
def test_roles(server: RunningServer, route: APIRoute, method: str) -> None:
    """No key: 401. Each role below the route's: 403, before the body is even looked at.
    The route's role and above: through authorization (any other answer)."""
    needed = required_role(route)
    path = path_for(route, {})
    with httpx.Client(base_url=server.base_url) as anonymous:
        assert call(anonymous, method, path).status_code == 401
    for role in ROLES:
        with server.client(server.new_key(role)) as client:
            status = call(client, method, path).status_code
        if ROLES.index(role) < ROLES.index(needed):
            assert status == 403, (role, status)
        else:
            assert status not in (401, 403), (role, status)


def _objects(admin: httpx.Client) -> dict[str, str]:
    """One object of each kind in the first organization, by path parameter name."""
    budget = admin.post("/api/budgets", json={"entityType": "user", "limitMicrodollars": 10**6})
    key = admin.post("/api/keys", json={"name": "victim"})
    reservation = admin.post("/api/reservations", json={"estimateMicrodollars": 5})
    return {
        "budget_id": budget.json()["data"]["id"],
        "key_id": key.json()["data"]["id"],
        "reservation_id": reservation.json()["data"]["reservationId"],
    }


def test_another_organization_sees_none_of_it(server: RunningServer, admin: httpx.Client) -> None:
    ids = _objects(admin)
    other_key = asyncio.run(_other_org_key(server.database_url))
    with server.client(other_key) as other:
        for route, method in CASES:
            names = set(re.findall(r"{(\w+)}", route.path_format))
            if names and names <= ids.keys():
                body = VALID_BODIES.get(route.path) if method in ("POST", "PATCH") else None
                response = call(other, method, path_for(route, ids), body)
                assert response.status_code == 404, (method, route.path, response.text)
        assert other.get("/api/budgets").json()["data"] == []
        assert other.get("/api/budgets/status").json()["entities"] == []
        assert [k["name"] for k in other.get("/api/keys").json()["data"]] == ["other-admin"]
    # and nothing the other organization tried changed the first one's objects
    assert admin.get(f"/api/budgets/{ids['budget_id']}").status_code == 200
    assert admin.delete(f"/api/reservations/{ids['reservation_id']}").status_code == 200


def test_openapi_describes_the_implementation(admin: httpx.Client) -> None:
    spec = admin.get("/openapi.json").json()
    for route in API_ROUTES:
        assert route.path_format in spec["paths"], route.path_format
        assert {m.lower() for m in route.methods} <= set(spec["paths"][route.path_format])
    schemas = spec["components"]["schemas"]
    budget_bodies = [f"{entity}BudgetCreate" for entity in ("User", "ApiKey", "Customer", "Tag")]
    for name in (*budget_bodies, "KeyCreate", "CostEventIn", "ReservationCreate"):
        schema = schemas[name]
        assert schema.get("additionalProperties") is False, name
        assert all(not re.search(r"_[a-z]", prop) for prop in schema["properties"]), name
    listed = {p["name"] for p in spec["paths"]["/api/cost-events"]["get"]["parameters"]}
    assert {"provider", "model", "source", "apiKeyId", "customer", "from", "to", "cursor"} <= listed


def test_schemathesis_finds_no_server_error(server: RunningServer, request: Any) -> None:
    if "postgresql" in request.node.callspec.id:
        pytest.skip("one database is enough for the fuzzer; it runs on SQLite")
    done = subprocess.run(
        [
            "st",
            "run",
            f"{server.base_url}/openapi.json",
            "-H",
            f"X-NullSpend-Key: {server.admin_key}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "15",
            "--max-time",
            "60",
            "--generation-deterministic",
            "--phases",
            "coverage,fuzzing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "passed" in done.stdout


EVENT = {"provider": "openai", "model": "gpt-4o-mini", "costMicrodollars": 1}
JSON_CONTENT = {"content-type": "application/json"}
SURROGATE = "\ud800"  # a lone surrogate: JSON's \ud800 escape, which no UTF-8 encodes

# (method, path, body) a database cannot store, or that overflows a column or a budget's sums.
UNSTORABLE = [
    ("POST", "/api/cost-events", {**EVENT, "model": "gpt\x00"}),
    ("POST", "/api/cost-events", {**EVENT, "traceId": "t\x00"}),
    ("POST", "/api/cost-events", {**EVENT, "sessionId": "s\x00"}),
    ("POST", "/api/cost-events", {**EVENT, "eventType": SURROGATE}),
    ("POST", "/api/cost-events", {**EVENT, "tags": {"team": SURROGATE}}),
    ("POST", "/api/cost-events", {**EVENT, "durationMs": 2**31}),
    ("POST", "/api/cost-events", {"provider": "openai", "model": "gpt-4o", "outputTokens": 2**62}),
    ("POST", "/api/cost-events/batch", {"events": [EVENT, {**EVENT, "actionId": "a\x00"}]}),
    ("POST", "/api/reservations", {"estimateMicrodollars": 1, "sessionId": SURROGATE}),
    ("POST", "/api/reservations", {"estimateMicrodollars": 1, "model": "m\x00"}),
    ("POST", "/api/reservations", {"request": {"model": "m" * 300, "messages": []}}),
    ("POST", "/api/reservations", {"request": {"model": "gpt\x00", "messages": []}}),
    ("POST", "/api/reservations", {"estimateMicrodollars": 1, "reservationId": "rsv_" + "a" * 37}),
    ("POST", "/api/reservations", {"estimateMicrodollars": 2**63 - 5}),
    ("POST", "/api/keys", {"name": "k\x00"}),
    ("POST", "/api/keys", {"name": "k" * 201}),
    ("GET", "/api/cost-events?model=a%00", None),
    ("POST", "/v1/chat/completions", {"model": "gpt-4o-mini\x00", "messages": []}),
    ("POST", "/v1/chat/completions", {"model": "m" * 300, "messages": []}),
]


@pytest.mark.parametrize(("method", "path", "body"), UNSTORABLE)
def test_what_no_database_can_store_is_refused_alike(
    server: RunningServer, method: str, path: str, body: Any
) -> None:
    """PostgreSQL refuses a NUL in text, a string longer than its column and an integer past
    its column; SQLite keeps them all. Each answered 500 on PostgreSQL (and the proxy 503,
    which clients retry); both now answer 400 validation_error and store nothing."""
    with server.client() as client:
        before = client.get("/api/cost-events").json()["data"]
        # Sent as JSON escapes (ASCII): a lone surrogate has no UTF-8 to send it as.
        sent = None if body is None else json.dumps(body)
        answer = client.request(method, path, content=sent, headers=JSON_CONTENT)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "validation_error"
        assert client.get("/api/cost-events").json()["data"] == before


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/reservations/rsv_%00/settle"),
        ("GET", "/api/cost-events/attribution/a%00?groupBy=model"),
        ("DELETE", "/api/keys/a%00"),
        ("GET", "/api/budgets/%00"),
    ],
)
def test_an_id_no_database_can_store_names_nothing(
    server: RunningServer, method: str, path: str
) -> None:
    """An id with a NUL was a 500 on PostgreSQL on most routes: it names nothing (404)."""
    with server.client() as client:
        body = {"costMicrodollars": 1} if method == "POST" else None
        answer = client.request(method, path, json=body)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "not_found"


def test_a_settle_priced_past_one_call_changes_nothing(server: RunningServer) -> None:
    """Usage that prices above what one call may cost was a 500 on PostgreSQL, its reservation
    left active; now a 400, and the reservation can still be settled."""
    with server.client() as client:
        made = client.post("/api/reservations", json={"estimateMicrodollars": 10})
        reservation = made.json()["data"]["reservationId"]
        settle = f"/api/reservations/{reservation}/settle"
        huge = client.post(settle, json={"model": "gpt-4o", "usage": {"outputTokens": 2**62}})
        assert huge.status_code == 400, huge.text
        assert client.post(settle, json={"costMicrodollars": 7}).status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "/api/cost-events?from=9999-12-31T23:59:59-14:00",  # past the year 9999 in UTC
        "/api/cost-events/summary?to=0001-01-01T00:00:00Z",  # a period back from the year 1
        "/api/cost-events/attribution.csv?groupBy=model&to=0001-01-01T00:00:00Z",
    ],
)
def test_dates_past_what_a_datetime_holds_are_refused(server: RunningServer, query: str) -> None:
    """Each was a 500 (an OverflowError), and export.csv broke off mid-body."""
    with server.client() as client:
        answer = client.get(query)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize(
    "query",
    [
        "/api/cost-events/summary?cursor=abc",
        "/api/cost-events/summary?limit=5",
        "/api/cost-events/attribution?groupBy=model&cursor=abc",
        "/api/cost-events/export.csv?groupBy=model",
        "/api/cost-events?groupBy=model",
        "/api/cost-events?modle=gpt-4o",
    ],
)
def test_a_parameter_the_route_does_not_take_is_refused(server: RunningServer, query: str) -> None:
    """Every event route shared one list of known parameters: a summary took a cursor and a
    limit it never used. Each route now refuses what it does not declare."""
    with server.client() as client:
        answer = client.get(query)
        assert answer.status_code == 400, answer.text
        assert "unknown query parameter" in answer.json()["error"]["message"]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_an_api_body_past_the_limit_is_refused_unread(
    server: RunningServer, declared: bool
) -> None:
    """NULLSPEND_MAX_BODY_BYTES held on the proxy only: the API read any body whole, before it
    even checked the key (an anonymous 300 MB POST /api/keys took the server from 136 MB to
    618 MB). Now a 413 payload_too_large on every route, and nothing is created."""
    limit = server.settings.max_body_bytes
    body = json.dumps({"name": "big", "defaultTags": {"team": "x" * limit}}).encode()
    with server.client() as client:
        before = client.get("/api/keys").json()["data"]
        sent = body if declared else iter([body[:1000], body[1000:]])  # an iterator is chunked
        for headers in ({}, {"X-NullSpend-Key": ""}):  # with the admin key, and anonymous
            answer = client.post("/api/keys", content=sent, headers={**JSON_CONTENT, **headers})
            assert answer.status_code == 413, answer.text
            assert answer.json()["error"]["code"] == "payload_too_large"
            sent = body if declared else iter([body[:1000], body[1000:]])
        assert client.get("/api/keys").json()["data"] == before
        # a body within the limit is still read
        assert client.post("/api/keys", json={"name": "small"}).status_code == 201


def test_openapi_describes_the_errors_and_the_key(admin: httpx.Client) -> None:
    """The description promised every route with input a 422 ``{"detail": [...]}``, which no
    route answers (a refused body is a 400 ``{"error": ...}``), and named no way to
    authenticate: a client generated from it could neither send the key nor read an error."""
    spec = admin.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    error = schemas["ErrorBody"]
    assert error["required"] == ["error"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert responses["4XX"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorBody"
            }, (method, path)
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-NullSpend-Key"}
    assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
    assert spec["security"] == [{"apiKey": []}, {"bearer": []}]
    refused = admin.post("/api/keys", json={"name": 5})
    assert refused.status_code == 400
    assert set(refused.json()["error"]) == set(error_properties(schemas))


def error_properties(schemas: dict[str, Any]) -> list[str]:
    detail = schemas["ErrorBody"]["properties"]["error"]["$ref"].rsplit("/", 1)[1]
    return list(schemas[detail]["properties"])


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NULLSPEND_HEARTBEAT_SECONDS", "0"),
        ("NULLSPEND_HEARTBEAT_SECONDS", "nan"),
        ("NULLSPEND_RESERVATION_TTL_SECONDS", "0"),
        ("NULLSPEND_RATE_LIMIT_PER_MINUTE", "0"),
        ("NULLSPEND_MAX_BODY_BYTES", "-1"),
        ("NULLSPEND_UPSTREAM_TIMEOUT_SECONDS", "0"),
    ],
)
def test_a_setting_out_of_range_is_refused_at_start(
    tmp_path: Path, variable: str, value: str
) -> None:
    """Out of range, a setting was taken: a heartbeat of 0 spun an idle server at 68 % of a
    core and took every proxied call's reservation for abandoned, a reservation TTL of 0
    expired each reservation as it was made, a rate limit of 0 refused every call."""
    nullspend = str(Path(sys.executable).with_name("nullspend"))
    done = subprocess.run(
        [nullspend, "serve", "--db", f"sqlite:///{tmp_path / 's.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, variable: value},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{variable}={value!r}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "s.db").exists()  # refused before anything was done
