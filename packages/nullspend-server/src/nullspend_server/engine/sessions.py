"""Per-session spend, for budgets that cap what one agent session may spend."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend_server.db.tables import SessionSpend


async def lock_session_spend(
    session: AsyncSession, org_id: str, session_id: str, now: dt.datetime
) -> SessionSpend:
    """The session's spend row, created at zero if new, locked for this transaction."""
    connection = await session.connection()
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    await session.execute(
        dialect.insert(SessionSpend)
        .values(
            org_id=org_id,
            session_id=session_id,
            spend_microdollars=0,
            reserved_microdollars=0,
            updated_at=now,
        )
        .on_conflict_do_nothing()
    )
    query = (
        select(SessionSpend)
        .where(col(SessionSpend.org_id) == org_id, col(SessionSpend.session_id) == session_id)
        .with_for_update()
    )
    return (await session.exec(query)).one()
