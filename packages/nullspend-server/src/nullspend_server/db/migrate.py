"""Schema migrations, run by ``nullspend migrate`` and before ``nullspend serve`` starts."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from nullspend_server.db.engine import create_engine_sync, is_sqlite, sync_url


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("nullspend_server.db") / "migrations"))
    return config


def migrate(url: str | URL) -> None:
    """Bring the database at ``url`` to the latest schema (creating a SQLite file if needed)."""
    target = sync_url(url)
    if is_sqlite(target) and target.database not in (None, "", ":memory:"):
        Path(target.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine_sync(target)
    try:
        with engine.connect() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
    finally:
        engine.dispose()
