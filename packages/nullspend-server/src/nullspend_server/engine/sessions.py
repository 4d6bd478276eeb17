"""Per-session spend, for budgets that cap what one agent session may spend."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, String, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from nullspend_server.db.database import Executor
from nullspend_server.db.tables import SESSION_SPEND
from nullspend_server.engine.matching import spent_plus

_ONE = (
    SESSION_SPEND.c.org_id == bindparam("org", type_=String),
    SESSION_SPEND.c.session_id == bindparam("session", type_=String),
)
_NEW = {
    "org_id": bindparam("org"),
    "session_id": bindparam("session"),
    "spend_microdollars": 0,
    "reserved_microdollars": 0,
    "updated_at": bindparam("now", type_=SESSION_SPEND.c.updated_at.type),
}
_CREATE = {
    name: dialect.insert(SESSION_SPEND).values(_NEW).on_conflict_do_nothing()
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_LOCK = (
    select(SESSION_SPEND.c.spend_microdollars, SESSION_SPEND.c.reserved_microdollars)
    .where(*_ONE)
    .with_for_update()
)
_CHANGE = (
    SESSION_SPEND.update()
    .where(*_ONE)
    .values(
        reserved_microdollars=SESSION_SPEND.c.reserved_microdollars
        + bindparam("reserved", type_=BigInteger),
        spend_microdollars=spent_plus(
            SESSION_SPEND.c.spend_microdollars, bindparam("actual", type_=BigInteger)
        ),
        updated_at=bindparam("now"),
    )
)


async def lock_session_spend(
    db: Executor, org_id: str, session_id: str, now: dt.datetime
) -> tuple[int, int]:
    """The session's spend and reserved amounts (its row created at zero if new), locked for
    this transaction."""
    key = {"org": org_id, "session": session_id}
    await db.execute(_CREATE[db.dialect.name], {**key, "now": now})
    row = (await db.execute(_LOCK, key)).one()
    return row.spend_microdollars, row.reserved_microdollars


async def change_session_spend(
    db: Executor,
    org_id: str,
    session_id: str,
    *,
    reserved: int,
    actual: int,
    now: dt.datetime,
) -> None:
    """Add ``reserved`` and ``actual`` to the session's amounts: reserving adds the estimate to
    the reserved amount; settling moves it out, and its actual cost into the spend."""
    await db.execute(
        _CHANGE,
        {"org": org_id, "session": session_id, "reserved": reserved, "actual": actual, "now": now},
    )
