"""The engine's statements run on SQLite's DB-API connection (``db.sqlite_direct``) must read
and write exactly what SQLAlchemy's own execution would: aware datetimes, JSON columns,
expanded IN lists, constants the statements carry, RETURNING in parameter order."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Connection, Integer, MetaData, String, Table, select

from nullspend_server.cost_events import _INSERT_EVENTS, event_columns
from nullspend_server.db.engine import create_engine_sync
from nullspend_server.db.sqlite_direct import DirectSQLite
from nullspend_server.db.tables import BUDGETS, COST_EVENTS, CostEvent, Organization
from nullspend_server.engine.matching import _BY_ID
from nullspend_server.engine.reserve import _INSERT_RESERVATION, _RESERVE_BUDGET
from nullspend_server.engine.settle import _LOCK

NOW = dt.datetime(2026, 11, 23, 10, 30, 15, 123456, tzinfo=dt.UTC)


@pytest.fixture
def connections(sqlite_template: Path, tmp_path: Path) -> Any:
    path = tmp_path / "direct.db"
    path.write_bytes(sqlite_template.read_bytes())
    engine = create_engine_sync(f"sqlite:///{path}")
    with engine.connect() as through_sqlalchemy:
        through_sqlalchemy.execute(
            Organization.__table__.insert(),  # type: ignore[attr-defined]
            {"id": "org_1", "name": "Org", "created_at": NOW},
        )
        through_sqlalchemy.commit()
        raw = engine.raw_connection()
        assert isinstance(raw.driver_connection, sqlite3.Connection)
        yield through_sqlalchemy, DirectSQLite(raw.driver_connection, engine.dialect)
        raw.close()
    engine.dispose()


def run(direct: DirectSQLite, statement: Any, parameters: Any) -> Any:
    return asyncio.run(direct.execute(statement, parameters))


def reservation(reservation_id: str) -> dict[str, Any]:
    return {
        "id": reservation_id,
        "org_id": "org_1",
        "api_key_id": "key_1",
        "status": "active",
        "estimate_microdollars": 2**40,
        "budget_ids": ["bud_b", "bud_a"],
        "source": "proxy",
        "provider": "openai",
        "model": "gpt-4o-mini",
        "customer": None,
        "session_id": "sess ü",
        "trace_id": "ab" * 16,
        "tags": {"team": "search", "_ns_estimated": "true"},
        "instance_id": "inst_1",
        "created_at": NOW,
        "expires_at": NOW + dt.timedelta(minutes=10),
        "finished_at": None,
    }


def budget(budget_id: str, limit: int, policy: str = "strict_block") -> dict[str, Any]:
    return {
        "id": budget_id,
        "org_id": "org_1",
        "entity_type": "tag",
        "entity_id": f"team={budget_id}",
        "limit_microdollars": limit,
        "spend_microdollars": 0,
        "reserved_microdollars": 0,
        "policy": policy,
        "reset_interval": "monthly",
        "current_period_start": NOW,
        "threshold_percentages": [50, 80],
        "velocity_window_seconds": 60,
        "velocity_cooldown_seconds": 60,
        "velocity_current_microdollars": 0,
        "velocity_previous_microdollars": 0,
        "created_at": NOW,
        "updated_at": NOW,
    }


def test_a_row_written_directly_reads_back_the_same_through_sqlalchemy(
    connections: tuple[Connection, DirectSQLite],
) -> None:
    sqlalchemy, direct = connections
    run(direct, _INSERT_RESERVATION, reservation("rsv_direct"))
    sqlalchemy.execute(_INSERT_RESERVATION, reservation("rsv_sqlalchemy"))
    sqlalchemy.commit()
    for reservation_id in ("rsv_direct", "rsv_sqlalchemy"):
        expected = sqlalchemy.execute(_LOCK, {"reservation_id": reservation_id}).one()
        got = run(direct, _LOCK, {"reservation_id": reservation_id}).one()
        assert tuple(got) == tuple(expected)
        assert got.created_at == NOW
        assert got.created_at.tzinfo is not None
        assert got.budget_ids == ["bud_b", "bud_a"]
        assert got.tags == {"team": "search", "_ns_estimated": "true"}
        assert got.estimate_microdollars == 2**40


@pytest.mark.parametrize("ids", [[], ["bud_a"], ["bud_c", "bud_a", "bud_b"]])
def test_expanded_in_lists_of_any_length(
    connections: tuple[Connection, DirectSQLite], ids: list[str]
) -> None:
    sqlalchemy, direct = connections
    sqlalchemy.execute(BUDGETS.insert(), [budget(b, 100) for b in ("bud_a", "bud_b", "bud_c")])
    sqlalchemy.commit()
    got = [tuple(row) for row in run(direct, _BY_ID, {"ids": ids})]
    assert got == [tuple(row) for row in sqlalchemy.execute(_BY_ID, {"ids": ids})]
    assert [row[0] for row in got] == sorted(ids)


def test_constants_in_a_statement_take_part(connections: tuple[Connection, DirectSQLite]) -> None:
    """The reserve guard compares with 'strict_block' and 0, constants of the statement."""
    sqlalchemy, direct = connections
    sqlalchemy.execute(
        BUDGETS.insert(), [budget("bud_strict", 100), budget("bud_warn", 100, "warn")]
    )
    sqlalchemy.commit()
    window = {
        "new_velocity_window_start": NOW,
        "new_velocity_current_microdollars": 0,
        "new_velocity_previous_microdollars": 0,
        "new_velocity_cooldown_until": None,
    }
    over = {**window, "estimate": 101}
    assert run(direct, _RESERVE_BUDGET, {**over, "budget_id": "bud_strict"}).rowcount == 0
    assert run(direct, _RESERVE_BUDGET, {**over, "budget_id": "bud_warn"}).rowcount == 1
    fits = {**window, "estimate": 100, "budget_id": "bud_strict"}
    assert run(direct, _RESERVE_BUDGET, fits).rowcount == 1
    row = run(direct, _BY_ID, {"ids": ["bud_strict"]}).one()
    assert row.reserved_microdollars == 100
    assert row.velocity_window_start == NOW


def test_returning_follows_the_order_of_the_rows(
    connections: tuple[Connection, DirectSQLite],
) -> None:
    sqlalchemy, direct = connections
    events = [
        event_columns(
            CostEvent(
                id=f"ce_{n}",
                org_id="org_1",
                source="proxy",
                provider="openai",
                model="gpt-4o-mini",
                cost_microdollars=n,
                created_at=NOW,
            )
        )
        for n in (7, 3, 5)
    ]
    seqs = run(direct, _INSERT_EVENTS, events).scalars()
    stored = dict(
        sqlalchemy.execute(select(COST_EVENTS.c.seq, COST_EVENTS.c.cost_microdollars)).all()
    )
    assert [stored[seq] for seq in seqs] == [7, 3, 5]


def test_an_insert_missing_a_python_side_default_is_refused(
    connections: tuple[Connection, DirectSQLite],
) -> None:
    """SQLAlchemy would fill such a column in its execution context, which is skipped here."""
    _, direct = connections
    table = Table("with_default", MetaData(), Column("id", String), Column("n", Integer, default=5))
    with pytest.raises(ValueError, match="give every column"):
        run(direct, table.insert(), {"id": "a"})
