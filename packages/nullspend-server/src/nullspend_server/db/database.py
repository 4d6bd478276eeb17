"""One handle on the database for the life of a server process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Protocol

from sqlalchemy import Connection, CursorResult, Dialect, Executable
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend_server.db.engine import (
    WRITE_TRANSACTION,
    create_engine_async,
    create_engine_sync,
    is_sqlite,
)


class Executor(Protocol):
    """What the engine's statements run on: one open transaction, Core statements only."""

    @property
    def dialect(self) -> Dialect: ...

    async def execute(
        self, statement: Executable, parameters: Any = None, /
    ) -> CursorResult[Any]: ...


class _OnLoopConnection:
    """A synchronous SQLite connection used from the event loop's own thread. A transaction
    there takes tens of microseconds: less than a single hop to aiosqlite's worker thread,
    of which an ORM transaction makes a dozen."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.dialect = connection.dialect

    async def execute(self, statement: Executable, parameters: Any = None, /) -> CursorResult[Any]:
        return self._connection.execute(statement, parameters)


class Database:
    def __init__(self, url: str | URL) -> None:
        self.url = url
        self.is_sqlite = is_sqlite(url)
        self.engine = create_engine_async(url)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # SQLite has one writer at a time. Queueing this process's writers here is far cheaper
        # than letting each connection spin in SQLite's busy handler (sleeps of up to 100 ms).
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None
        self._sqlite_on_loop = create_engine_sync(url) if self.is_sqlite else None

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self._sqlite_on_loop is not None:
            self._sqlite_on_loop.dispose()

    @asynccontextmanager
    async def write_transaction(self) -> AsyncIterator[Executor]:
        """The enforcement engine's transactions: Core statements, committed when the block
        ends, rolled back if it raises. On SQLite the statements run on the event loop's
        thread (after this process's other writers, see ``write_session``); a writer in another
        process is waited for by SQLite's busy timeout. On PostgreSQL, an async connection."""
        if self._sqlite_on_loop is None:
            async with self.engine.begin() as connection:
                yield connection
            return
        assert self._sqlite_writer is not None
        async with self._sqlite_writer:
            with self._sqlite_on_loop.connect() as connection:
                connection.execution_options(**WRITE_TRANSACTION)
                with connection.begin():
                    yield _OnLoopConnection(connection)

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
