import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from nullspend_server.auth import KeyCache, Principal
from nullspend_server.db.database import Database
from tests.nullspend_server.conftest import RunningServer


def test_introspect(admin: httpx.Client) -> None:
    body = admin.get("/api/auth/introspect").json()["data"]
    assert body["role"] == "admin"
    assert body["keyId"].startswith("key_")
    assert body["orgId"].startswith("org_")
    assert body["apiVersion"] == "2026-04-01"


def test_key_is_shown_once_and_stored_as_a_digest(
    server: RunningServer, admin: httpx.Client
) -> None:
    created = admin.post("/api/keys", json={"name": "ci", "role": "viewer"}).json()["data"]
    assert re.fullmatch(r"ns_live_sk_[0-9a-f]{32}", created["key"])
    assert created["prefix"] == created["key"][:19]
    listed = admin.get("/api/keys").json()["data"]
    assert all("key" not in row for row in listed)
    assert {row["id"] for row in listed} >= {created["id"]}
    with server.client(created["key"]) as viewer:
        assert viewer.get("/api/auth/introspect").json()["data"]["role"] == "viewer"


def test_bearer_auth_is_accepted(server: RunningServer) -> None:
    with httpx.Client(base_url=server.base_url) as client:
        response = client.get(
            "/api/auth/introspect", headers={"Authorization": f"Bearer {server.admin_key}"}
        )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "required"),
        ({"X-NullSpend-Key": "sk-not-ours"}, "malformed"),
        ({"X-NullSpend-Key": "ns_live_sk_" + "0" * 32}, "unknown or revoked"),
    ],
)
def test_authentication_errors(
    server: RunningServer, headers: dict[str, str], message: str
) -> None:
    with httpx.Client(base_url=server.base_url, headers=headers) as client:
        response = client.get("/api/auth/introspect")
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "authentication_required"
    assert message in error["message"]


def test_revocation_takes_effect_on_the_next_request(
    server: RunningServer, admin: httpx.Client
) -> None:
    created = admin.post("/api/keys", json={"name": "short-lived"}).json()["data"]
    with server.client(created["key"]) as member:
        assert member.get("/api/auth/introspect").status_code == 200
        assert admin.delete(f"/api/keys/{created['id']}").status_code == 200
        assert member.get("/api/auth/introspect").status_code == 401


@pytest.mark.parametrize("role", ["viewer", "member"])
def test_only_admins_manage_keys(server: RunningServer, role: str) -> None:
    with server.client(server.new_key(role)) as client:
        for response in (
            client.get("/api/keys"),
            client.post("/api/keys", json={"name": "x"}),
            client.delete("/api/keys/key_123"),
        ):
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "forbidden"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "role": "owner"},
        {"name": "x", "defaultTags": {"_ns_estimated": "1"}},
        {"name": "x", "defaultTags": {f"k{i}": "v" for i in range(11)}},
        {"name": "x", "unknownField": 1},
        {"role": "admin"},
    ],
)
def test_key_creation_validation(admin: httpx.Client, body: dict[str, object]) -> None:
    response = admin.post("/api/keys", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_malformed_json_is_a_validation_error(admin: httpx.Client) -> None:
    response = admin.post(
        "/api/keys", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


def test_unknown_route_is_not_found_in_the_error_format(admin: httpx.Client) -> None:
    response = admin.get("/api/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_key_revoked_while_it_is_looked_up_is_not_cached(
    server: RunningServer, admin: httpx.Client
) -> None:
    """A lookup that read the key before its revocation committed stored that stale answer
    after the revocation had emptied the cache: the revoked key was then let in for the whole
    cache time (60 s here), in the very process that revoked it."""
    created = admin.post("/api/keys", json={"name": "raced"}).json()["data"]
    cache = KeyCache(ttl=60)

    async def lookups() -> tuple[Principal | None, Principal | None]:
        db = Database(server.database_url)

        class RevokedDuringTheRead:
            """The database, with the key revoked (and the cache emptied, as the revoking
            route does) between the lookup's read and its caching of what it read."""

            @contextlib.asynccontextmanager
            async def sessions(self) -> AsyncIterator[object]:
                async with db.sessions() as session:
                    yield session
                revoked = await asyncio.to_thread(admin.delete, f"/api/keys/{created['id']}")
                assert revoked.status_code == 200
                cache.forget()

        try:
            raced = await cache.lookup(RevokedDuringTheRead(), created["key"])  # type: ignore[arg-type]
            return raced, await cache.lookup(db, created["key"])
        finally:
            await db.dispose()

    raced, after = asyncio.run(lookups())
    assert raced is not None  # read before the revocation: that request raced it
    assert after is None
