"""Who is calling: the API key from ``X-NullSpend-Key`` (or ``Authorization: Bearer``), its
organization and role. Lookups are cached briefly; a revocation is seen within the cache time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend.errors import ErrorCode
from nullspend_server.db.database import Database
from nullspend_server.db.tables import ApiKey
from nullspend_server.errors import ApiError
from nullspend_server.keys import KEY_PATTERN, hash_key, role_allows


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    org_id: str
    role: str
    default_tags: dict[str, str]


class KeyCache:
    """Key digest -> principal (or None for an unknown or revoked key), for ``ttl`` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._forgotten = 0
        """How many times the cache was emptied: a lookup it emptied during must not store."""

    async def lookup(self, db: Database, key: str) -> Principal | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        forgotten = self._forgotten
        async with db.sessions() as session:
            row = (await session.exec(select(ApiKey).where(ApiKey.key_hash == digest))).first()
        principal = (
            Principal(row.id, row.org_id, row.role, dict(row.default_tags))
            if row is not None and row.revoked_at is None
            else None
        )
        if len(self._entries) > 10_000:
            self._entries.clear()  # keys come from requests: keep the cache bounded
        if forgotten == self._forgotten:  # else a revocation came since the read: it is stale
            self._entries[digest] = (now + self.ttl, principal)
        return principal

    def forget(self) -> None:
        self._entries.clear()
        self._forgotten += 1


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request presents, from its (lower-case) header names."""
    key = headers.get("x-nullspend-key")
    if key is not None:
        return key.strip()  # as a Bearer key is: a pasted key's trailing space or newline
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


async def principal_for(key: str | None, db: Database, cache: KeyCache) -> Principal:
    """Who presented ``key``, or the 401 to answer."""
    if not key:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "X-NullSpend-Key header is required")
    if KEY_PATTERN.fullmatch(key) is None:
        raise ApiError(
            ErrorCode.AUTHENTICATION_REQUIRED,
            "malformed API key: expected ns_live_sk_ followed by 32 hex characters",
        )
    principal = await cache.lookup(db, key)
    if principal is None:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "unknown or revoked API key")
    return principal


async def authenticate(request: Request) -> Principal:
    state = request.app.state
    return await principal_for(presented_key(request.headers), state.db, state.key_cache)


class RoleRequirement:
    """A route's dependency on an authenticated key with at least ``role``. Routes declare it
    through Viewer / Member / Admin, so a route's required role can be read off the route."""

    def __init__(self, role: str) -> None:
        self.role = role

    async def __call__(self, request: Request) -> Principal:
        principal = await authenticate(request)
        if not role_allows(principal.role, self.role):
            raise ApiError(
                ErrorCode.FORBIDDEN,
                f"this needs the {self.role} role; the key has {principal.role}",
                {"requiredRole": self.role, "role": principal.role},
            )
        return principal


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.sessions() as s:
        yield s


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    db: Database = request.app.state.db
    async with db.write_session() as s:
        yield s


Viewer = Annotated[Principal, Depends(RoleRequirement("viewer"))]
Member = Annotated[Principal, Depends(RoleRequirement("member"))]
Admin = Annotated[Principal, Depends(RoleRequirement("admin"))]
Session = Annotated[AsyncSession, Depends(session)]
"""For reads."""
WriteSession = Annotated[AsyncSession, Depends(write_session)]
"""For requests that write (on SQLite, the transaction takes the write lock as it begins)."""
