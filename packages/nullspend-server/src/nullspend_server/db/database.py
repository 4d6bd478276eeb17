"""One handle on the database for the life of a server process."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

from sqlalchemy import Dialect, Engine, Executable, PoolProxiedConnection
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend_server.db.engine import (
    WRITE_TRANSACTION,
    create_engine_async,
    create_engine_sync,
    is_sqlite,
)
from nullspend_server.db.sqlite_direct import DirectSQLite

# What a database that cannot be used raises, on either path (SQLAlchemy's, or the engine's
# direct SQLite one): enforcement answers 503 ``budget_unavailable`` and forwards nothing.
STORAGE_ERRORS: tuple[type[Exception], ...] = (SQLAlchemyError, sqlite3.Error, OSError)
log = logging.getLogger("nullspend.db")


class Rows(Protocol):
    """What the engine reads of a statement's result (SQLAlchemy's results are such)."""

    @property
    def rowcount(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def first(self) -> Any: ...

    def one(self) -> Any: ...

    def scalars(self) -> Iterable[Any]: ...


class Executor(Protocol):
    """What the engine's statements run on: one open transaction, Core statements only."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(self, statement: Executable, parameters: Any = None, /) -> Rows: ...


async def end_read(session: AsyncSession) -> None:
    """Give a read session's connection back to the pool before the same request takes a
    writing one. Requests that each held one while waiting for another would empty the pool
    together and wait on each other until its timeout. What the read loaded stays usable
    (sessions do not expire objects at commit)."""
    await session.commit()


class Database:
    def __init__(self, url: str | URL) -> None:
        self.url = url
        self.is_sqlite = is_sqlite(url)
        # No connection of this process checkpoints as it commits: a checkpoint copies the WAL
        # into the database file and fsyncs it, and whichever write comes next fsyncs the
        # WAL's new header: milliseconds that would land on one unlucky request, or on the event
        # loop. ``run_checkpoints`` does both in a worker thread.
        self.engine = create_engine_async(url, autocheckpoint=False)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # PostgreSQL: the heart-beat's own connection. Requests holding all of the pool's (a
        # burst, slow readers) must not make this process look dead to the others, which would
        # settle its calls in flight at their estimate.
        self._duty_engine = None if self.is_sqlite else create_engine_async(url, pool_size=1)
        # SQLite has one writer at a time. Queueing this process's writers here is far cheaper
        # than letting each connection spin in SQLite's busy handler (sleeps of up to 100 ms).
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None
        self._sqlite_on_loop = (
            create_engine_sync(url, autocheckpoint=False) if self.is_sqlite else None
        )
        self._sqlite_connection: PoolProxiedConnection | None = None

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._duty_engine is not None:
            await self._duty_engine.dispose()
        if self._sqlite_connection is not None:
            self._sqlite_connection.close()
            self._sqlite_connection = None
        if self._sqlite_on_loop is not None:
            self._sqlite_on_loop.dispose()

    async def run_checkpoints(self, interval_seconds: float) -> None:
        """SQLite: copy the WAL back into the database file every ``interval_seconds``, in a
        worker thread, for as long as the task runs (PostgreSQL: returns at once).

        SQLite starts the WAL over in the first write after a checkpoint that copied all of it,
        and that write fsyncs the WAL's new header: milliseconds spent on the event loop, in
        whichever request wrote first, once a second (benchmarks/README.md, the tail). So this
        duty writes first: once a checkpoint has copied the whole WAL, while this process's
        writers wait, it copies what they added meanwhile and starts the WAL over itself."""
        if self._sqlite_on_loop is None:
            return
        assert self._sqlite_writer is not None
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                if not await asyncio.to_thread(self._checkpoint, self._sqlite_on_loop):
                    continue  # a reader kept it from the end: the WAL cannot start over yet
                async with self._sqlite_writer:
                    await asyncio.to_thread(self._checkpoint, self._sqlite_on_loop, restart=True)
            except STORAGE_ERRORS:  # the next round tries again; the WAL keeps every write
                log.exception("checkpointing the SQLite WAL failed")

    @staticmethod
    def _checkpoint(engine: Engine, *, restart: bool = False) -> bool:
        """A PASSIVE checkpoint (copies what it can without waiting for, or blocking, readers
        and writers); True if it copied the whole WAL. With ``restart``, a write follows that
        starts the WAL over (it rewrites ``user_version`` unchanged: one page)."""
        # The DB-API connection, outside any transaction (SQLAlchemy's would begin one).
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            _busy, frames, copied = cursor.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if restart and frames == copied:
                (version,) = cursor.execute("PRAGMA user_version").fetchone()
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute(f"PRAGMA user_version = {int(version)}")
                cursor.execute("COMMIT")
        finally:
            connection.close()
        return bool(frames == copied)

    @asynccontextmanager
    async def write_transaction(self) -> AsyncIterator[Executor]:
        """The enforcement engine's transactions: Core statements, committed when the block
        ends, rolled back if it raises. On SQLite the statements run on the event loop's
        thread (after this process's other writers, see ``write_session``); a writer in another
        process is waited for by SQLite's busy timeout. On PostgreSQL, an async connection.

        On SQLite the transaction is on this process's one engine connection, kept open, and
        its statements skip SQLAlchemy's execution layer (``sqlite_direct``)."""
        if self._sqlite_on_loop is None:
            async with self.engine.begin() as connection:
                yield connection
            return
        assert self._sqlite_writer is not None
        async with self._sqlite_writer:
            if self._sqlite_connection is None:
                self._sqlite_connection = self._sqlite_on_loop.raw_connection()
            raw = self._sqlite_connection.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            raw.execute("BEGIN IMMEDIATE")
            try:
                yield DirectSQLite(raw, self._sqlite_on_loop.dialect)
            except BaseException:
                raw.rollback()
                raise
            raw.commit()

    @asynccontextmanager
    async def duty_session(self) -> AsyncIterator[AsyncSession]:
        """A writing session for the process's heart-beat: on PostgreSQL on a connection no
        request can take (on SQLite, ``write_session``: one writer at a time anyway)."""
        if self._duty_engine is None:
            async with self.write_session() as session:
                yield session
            return
        async with AsyncSession(self._duty_engine, expire_on_commit=False) as session:
            yield session

    @asynccontextmanager
    async def write_session(self) -> AsyncIterator[AsyncSession]:
        """A session whose first transaction will write: on SQLite it takes the write lock as
        it begins. Reads use ``sessions()`` and never wait for writers."""
        async with AsyncExitStack() as stack:
            if self._sqlite_writer is not None:
                await stack.enter_async_context(self._sqlite_writer)
            session = await stack.enter_async_context(self.sessions())
            await session.connection(execution_options=WRITE_TRANSACTION)
            yield session
