"""Writing cost events: the one function both ingestion and reservation settlement call, so an
event is stored the same way whichever path produced it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend.attribution import tags_with_customer
from nullspend_server.db.database import Executor
from nullspend_server.db.tables import COST_EVENT_TAGS, COST_EVENTS, CostEvent

_INSERT_EVENTS = COST_EVENTS.insert().returning(COST_EVENTS.c.seq, sort_by_parameter_order=True)
_INSERT_TAGS = COST_EVENT_TAGS.insert()


def event_columns(event: CostEvent) -> dict[str, Any]:
    """An ORM event as the column values ``record_cost_events`` takes."""
    return event.model_dump(exclude={"seq"})


async def record_cost_events(
    db: AsyncSession | Executor, events: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``events`` (column values; every event the same columns, ``seq`` left to the
    database) and their tag rows in the caller's transaction: one multi-row INSERT ...
    RETURNING for the events, one for their tags (a customer among them,
    ``tags_with_customer``).
    """
    rows = [
        {**event, "tags": tags_with_customer(event["tags"], event["customer"])} for event in events
    ]
    result = await db.execute(_INSERT_EVENTS, rows)
    tags = [
        {"event_seq": seq, "key": k, "value": v, "org_id": row["org_id"]}
        for row, seq in zip(rows, result.scalars(), strict=True)
        for k, v in row["tags"].items()
    ]
    if tags:
        await db.execute(_INSERT_TAGS, tags)
