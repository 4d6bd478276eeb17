"""API keys: create (the key is shown once), list, revoke; and introspection."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import Field
from sqlmodel import col, select

from nullspend.errors import ErrorCode
from nullspend_server.accounts import create_key
from nullspend_server.api.schema import ApiModel, Data, RequestModel, Tags
from nullspend_server.auth import Admin, Session, Viewer, WriteSession
from nullspend_server.db.tables import ApiKey, utcnow
from nullspend_server.errors import ApiError

router = APIRouter(tags=["keys"])

Role = Literal["admin", "member", "viewer"]


class KeyCreate(RequestModel):
    name: str = Field(min_length=1, max_length=200)
    role: Role = "member"
    default_tags: Tags = Field(default_factory=dict)


class KeyInfo(ApiModel):
    id: str
    name: str
    role: str
    prefix: str
    default_tags: dict[str, str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None


class CreatedKey(KeyInfo):
    key: str
    """The API key itself: shown in this response only."""


class KeyList(ApiModel):
    data: list[KeyInfo]


class Introspection(ApiModel):
    key_id: str
    org_id: str
    role: str
    api_version: str


@router.get("/api/auth/introspect")
async def introspect(principal: Viewer, request: Request) -> Data[Introspection]:
    version = request.app.state.settings.api_version
    return Data(
        data=Introspection(
            key_id=principal.key_id,
            org_id=principal.org_id,
            role=principal.role,
            api_version=version,
        )
    )


@router.post("/api/keys", status_code=201)
async def create(body: KeyCreate, principal: Admin, session: WriteSession) -> Data[CreatedKey]:
    row, key = await create_key(session, principal.org_id, body.name, body.role, body.default_tags)
    await session.commit()
    info = KeyInfo.model_validate(row)
    return Data(data=CreatedKey(**info.model_dump(), key=key))


@router.get("/api/keys")
async def list_keys(principal: Admin, session: Session) -> KeyList:
    rows = await session.exec(
        select(ApiKey).where(ApiKey.org_id == principal.org_id).order_by(col(ApiKey.created_at))
    )
    return KeyList(data=[KeyInfo.model_validate(row) for row in rows])


@router.delete("/api/keys/{key_id}")
async def revoke(
    key_id: str, principal: Admin, session: WriteSession, request: Request
) -> Data[KeyInfo]:
    row = await session.get(ApiKey, key_id)
    if row is None or row.org_id != principal.org_id:
        raise ApiError(ErrorCode.NOT_FOUND, f"no API key {key_id!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        await session.commit()
    request.app.state.key_cache.forget()  # this process sees the revocation at once
    return Data(data=KeyInfo.model_validate(row))
