"""Direct database access for tests: set up states and check what the API wrote."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, create_engine, text

from nullspend_server.db.engine import sync_url


@contextmanager
def connect(database_url: str) -> Iterator[Connection]:
    engine = create_engine(sync_url(database_url))
    try:
        with engine.begin() as connection:
            yield connection
    finally:
        engine.dispose()


def rows(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with connect(database_url) as connection:
        return [dict(row._mapping) for row in connection.execute(text(sql), params)]


def execute(database_url: str, sql: str, **params: Any) -> None:
    with connect(database_url) as connection:
        connection.execute(text(sql), params)
