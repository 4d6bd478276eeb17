"""Organizations and API keys: shared by the API, the CLI and first-start bootstrap."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend_server.db.tables import ApiKey, Organization, utcnow
from nullspend_server.ids import new_id
from nullspend_server.keys import display_prefix, generate_key, hash_key


async def create_organization(session: AsyncSession, name: str) -> Organization:
    org = Organization(id=new_id("org"), name=name, created_at=utcnow())
    session.add(org)
    await session.flush()
    return org


async def create_key(
    session: AsyncSession,
    org_id: str,
    name: str,
    role: str,
    default_tags: dict[str, str] | None = None,
) -> tuple[ApiKey, str]:
    """A new key row and the key itself: the only time the plaintext exists."""
    key = generate_key()
    row = ApiKey(
        id=new_id("key"),
        org_id=org_id,
        name=name,
        role=role,
        key_hash=hash_key(key),
        prefix=display_prefix(key),
        default_tags=default_tags or {},
        created_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return row, key


async def bootstrap(session: AsyncSession) -> str | None:
    """On an empty database, create an organization and an admin key; return the key."""
    if await session.scalar(select(func.count()).select_from(Organization)):
        return None
    org = await create_organization(session, "default")
    _, key = await create_key(session, org.id, "admin", "admin")
    await session.commit()
    return key


async def default_org_id(session: AsyncSession) -> str:
    """The organization CLI-created keys belong to: the oldest one, created if there is none."""
    org = (await session.exec(select(Organization).order_by(col(Organization.created_at)))).first()
    if org is None:
        org = await create_organization(session, "default")
    return org.id
