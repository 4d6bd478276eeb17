"""One handle on the database for the life of a server process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend_server.db.engine import WRITE_TRANSACTION, create_engine_async, is_sqlite


class Database:
    def __init__(self, url: str | URL) -> None:
        self.url = url
        self.is_sqlite = is_sqlite(url)
        self.engine = create_engine_async(url)
        self.sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        # SQLite has one writer at a time. Queueing this process's writers here is far cheaper
        # than letting each connection spin in SQLite's busy handler (sleeps of up to 100 ms).
        self._sqlite_writer = asyncio.Lock() if self.is_sqlite else None

    async def dispose(self) -> None:
        await self.engine.dispose()

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
