"""Database engines. SQLite runs in WAL mode: reads never block the writer. A transaction that
will write opts in to taking the write lock when it begins (``BEGIN IMMEDIATE``, see
``WRITE_TRANSACTION``), so two writers never deadlock upgrading a read lock; PostgreSQL relies on
row locks taken in a consistent order and ignores the option."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Execution options of a connection whose transaction will write.
WRITE_TRANSACTION = {"sqlite_begin": "IMMEDIATE"}


def sync_url(url: str | URL) -> URL:
    """The URL for synchronous use (migrations, CLI): plain pysqlite or psycopg."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite")
    if parsed.get_backend_name() == "postgresql":
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(
        f"unsupported database {parsed.get_backend_name()!r}: use SQLite or PostgreSQL"
    )


def async_url(url: str | URL) -> URL:
    parsed = sync_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.set(drivername="sqlite+aiosqlite")
    return parsed


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def configure_sqlite(engine: Any, *, autocheckpoint: bool = True) -> None:
    """WAL, a busy timeout, foreign keys; BEGIN IMMEDIATE for write transactions. Without
    ``autocheckpoint`` a commit never copies the WAL back into the database file (and fsyncs
    it): someone else must (``Database.run_checkpoints``)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide when transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        if not autocheckpoint:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


def create_engine_async(
    url: str | URL, *, pool_size: int = 10, pool_timeout: float = 30.0, autocheckpoint: bool = True
) -> AsyncEngine:
    target = async_url(url)
    if target.get_backend_name() == "sqlite":
        engine = create_async_engine(target)
        configure_sqlite(engine.sync_engine, autocheckpoint=autocheckpoint)
        return engine
    return create_async_engine(
        target,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=pool_timeout,
        pool_pre_ping=True,
    )


def create_engine_sync(url: str | URL, *, autocheckpoint: bool = True) -> Engine:
    """A synchronous engine (migrations, CLI, and the engine's SQLite transactions on the event
    loop's thread, see ``Database.write_transaction``). SQLite connections never change thread
    while in use; the check is off only so that a pool can be disposed of from another one."""
    target = sync_url(url)
    if target.get_backend_name() != "sqlite":
        return create_engine(target)
    engine = create_engine(target, connect_args={"check_same_thread": False})
    configure_sqlite(engine, autocheckpoint=autocheckpoint)
    return engine
