"""Which budgets a request is subject to, locked for the rest of the transaction."""

from __future__ import annotations

from sqlalchemy import and_, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend_server.db.tables import Budget


async def lock_budgets(
    session: AsyncSession,
    org_id: str,
    api_key_id: str,
    customer: str | None,
    tags: dict[str, str],
) -> list[Budget]:
    """The org-wide (``user``), key, customer and per-tag budgets, locked in id order.

    PostgreSQL locks the rows (FOR UPDATE) in a consistent order so concurrent requests queue
    instead of deadlocking; SQLite already holds the database write lock (BEGIN IMMEDIATE).
    """
    entity = (col(Budget.entity_type), col(Budget.entity_id))
    wanted = [
        and_(entity[0] == "user", entity[1] == org_id),
        and_(entity[0] == "api_key", entity[1] == api_key_id),
    ]
    if customer:
        wanted.append(and_(entity[0] == "customer", entity[1] == customer))
    if tags:
        wanted.append(
            and_(entity[0] == "tag", entity[1].in_([f"{k}={v}" for k, v in tags.items()]))
        )
    query = (
        select(Budget)
        .where(col(Budget.org_id) == org_id, or_(*wanted))
        .order_by(col(Budget.id))
        .with_for_update()
    )
    return list(await session.exec(query))


async def lock_budgets_by_id(session: AsyncSession, ids: list[str]) -> list[Budget]:
    if not ids:
        return []
    query = select(Budget).where(col(Budget.id).in_(ids)).order_by(col(Budget.id)).with_for_update()
    return list(await session.exec(query))
