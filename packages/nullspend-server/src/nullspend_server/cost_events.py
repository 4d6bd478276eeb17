"""Writing cost events: the one function both ingestion and reservation settlement call, so an
event is stored the same way whichever path produced it."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import insert
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend_server.db.tables import CostEvent, CostEventTag


async def record_cost_events(session: AsyncSession, events: Sequence[CostEvent]) -> None:
    """Insert ``events`` and their tag rows in the session's transaction (the caller commits):
    one multi-row INSERT ... RETURNING for the events, one for their tags.

    A customer id also becomes the tag ``customer=<id>``, so attribution by customer and by any
    tag share one mechanism. Each event's ``seq`` is set from the database.
    """
    for event in events:
        if event.customer and "customer" not in event.tags:
            event.tags = {**event.tags, "customer": event.customer}
    result = await session.execute(
        insert(CostEvent).returning(col(CostEvent.seq), sort_by_parameter_order=True),
        [event.model_dump(exclude={"seq"}) for event in events],
    )
    tags = []
    for event, seq in zip(events, result.scalars(), strict=True):
        event.seq = seq
        tags += [
            {"event_seq": seq, "key": k, "value": v, "org_id": event.org_id}
            for k, v in event.tags.items()
        ]
    if tags:
        await session.execute(insert(CostEventTag), tags)


async def record_cost_event(session: AsyncSession, event: CostEvent) -> CostEvent:
    await record_cost_events(session, [event])
    return event
