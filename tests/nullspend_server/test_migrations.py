"""The migrations build, from an empty database, exactly the schema the tables declare."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from nullspend_server.db.engine import sync_url
from nullspend_server.db.migrate import alembic_config, migrate


def test_migrated_schema_matches_the_tables(database_url: str) -> None:
    migrate(database_url)  # idempotent on an up-to-date database
    engine = create_engine(sync_url(database_url))
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.check(config)  # raises if autogenerate finds any difference
            tables = set(inspect(connection).get_table_names())
    finally:
        engine.dispose()
    assert {
        "organizations",
        "api_keys",
        "cost_events",
        "cost_event_tags",
        "budgets",
        "session_spend",
        "reservations",
        "server_instances",
    } <= tables


def test_migrate_from_an_empty_sqlite_file(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/fresh/nullspend.db"
    migrate(url)
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            assert "budgets" in inspect(connection).get_table_names()
            mode = connection.exec_driver_sql("PRAGMA journal_mode").scalar()
    finally:
        engine.dispose()
    assert mode == "wal"
