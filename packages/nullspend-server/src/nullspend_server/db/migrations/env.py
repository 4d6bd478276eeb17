"""Alembic environment: runs on the connection handed in by nullspend_server.db.migrate."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlmodel import SQLModel

from nullspend_server.db.tables import UTCDateTime


def render_item(kind: str, item: Any, autogen_context: Any) -> str | Literal[False]:
    # UTCDateTime is a Python-side wrapper: the column type in the database is plain DateTime.
    if kind == "type" and isinstance(item, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
