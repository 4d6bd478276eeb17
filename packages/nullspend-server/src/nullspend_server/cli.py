"""``nullspend serve``, ``nullspend migrate`` and ``nullspend keys``: added to the core command
line through the ``nullspend.cli`` entry-point group."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import pydantic
import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nullspend.attribution import tag_errors
from nullspend.cli.options import fail
from nullspend_server.accounts import bootstrap, create_key, default_org_id
from nullspend_server.api.keys import KeyCreate
from nullspend_server.db.database import Database
from nullspend_server.db.migrate import migrate as run_migrations
from nullspend_server.db.tables import ApiKey, utcnow
from nullspend_server.keys import ROLES
from nullspend_server.settings import ServerSettings

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: NULLSPEND_DATABASE_URL or ./nullspend.db)."),
]


T = TypeVar("T")
# What a wrong, unreachable or unsupported database raises: reported, not a traceback.
DATABASE_ERRORS = (SQLAlchemyError, OSError, ValueError)


def _settings() -> ServerSettings:
    """The settings in the environment; one that cannot be read is a clear error, not a
    traceback."""
    try:
        return ServerSettings()
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"NULLSPEND_{str(e['loc'][0]).upper()}={e['input']!r}: {e['msg']}"
            for e in error.errors(include_url=False)
        )
        raise fail(f"invalid setting: {problems}") from None
    except ValueError as error:  # pydantic-settings' SettingsError: a list that is not JSON
        raise fail(f"invalid setting: {error}") from None


def _database_url(db: str | None) -> str:
    return db or _settings().database_url


def _shown(url: str) -> str:
    """The database URL as an error may print it: without its password (a log keeps it)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(its URL cannot be read)"


def _with_session(url: str, operation: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Migrate the database, then run one operation in a session; a database that cannot be
    used is a clear error, not a traceback."""
    try:
        run_migrations(url)
        return asyncio.run(_in_session(url, operation))
    except DATABASE_ERRORS as error:
        raise fail(f"cannot use the database {_shown(url)}: {error}") from None


async def _in_session(url: str, operation: Callable[[AsyncSession], Awaitable[T]]) -> T:
    db = Database(url)
    try:
        async with db.write_session() as session:
            return await operation(session)
    finally:
        await db.dispose()


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.", min=1, max=65535)] = None,
    db: DbOption = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Run the NullSpend server (migrating the database first)."""
    import uvicorn

    settings = _settings()
    port = port or settings.port
    # Out of range, the port was taken modulo 65536 (99999 listened on 34463, announcing 99999).
    if not 1 <= port <= 65535:
        raise fail(f"the port must be 1 to 65535, not {port} (NULLSPEND_PORT)")
    url = _database_url(db)
    key = _with_session(url, bootstrap)
    if key:
        typer.echo("Created an organization and its admin API key (shown once, keep it safe):")
        typer.echo(f"  {key}")
    # Workers are separate processes: they read the same settings from the environment.
    os.environ["NULLSPEND_DATABASE_URL"] = url
    uvicorn.run(
        "nullspend_server.app:create_app",
        factory=True,
        host=host or settings.host,
        port=port,
        workers=workers or settings.workers,
        log_level="info",
    )


def migrate(db: DbOption = None) -> None:
    """Bring the database schema up to date."""
    url = _database_url(db)
    try:
        run_migrations(url)
    except DATABASE_ERRORS as error:
        raise fail(f"cannot use the database {_shown(url)}: {error}") from None
    typer.echo("database is up to date")


keys = typer.Typer(help="Manage API keys without a running server.", no_args_is_help=True)


@keys.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="A name for the key.")],
    role: Annotated[str, typer.Option("--role", help="admin, member or viewer.")] = "member",
    default_tags: Annotated[
        str | None, typer.Option("--default-tags", help='Tags as JSON, e.g. {"team": "ml"}.')
    ] = None,
    db: DbOption = None,
) -> None:
    """Create an API key and print it (it is shown once)."""
    if role not in ROLES:
        raise fail(f"--role must be one of {', '.join(ROLES)}")
    try:  # the API's rule: unchecked, PostgreSQL refused a long name with its SQL for an error
        KeyCreate(name=name)
    except pydantic.ValidationError as error:
        raise fail(f"--name: {error.errors()[0]['msg']}") from None
    try:
        tags = json.loads(default_tags) if default_tags else {}
    except ValueError as error:
        raise fail(f"--default-tags is not JSON: {error}") from None
    if errors := tag_errors(tags):
        raise fail("--default-tags: " + "; ".join(errors))

    async def create(session: AsyncSession) -> str:
        _, key = await create_key(session, await default_org_id(session), name, role, tags)
        await session.commit()
        return key

    typer.echo(_with_session(_database_url(db), create))


@keys.command("list")
def keys_list(db: DbOption = None) -> None:
    """List API keys (prefixes only: keys are never stored)."""

    async def rows(session: AsyncSession) -> list[ApiKey]:
        return list(await session.exec(select(ApiKey).order_by(col(ApiKey.created_at))))

    for row in _with_session(_database_url(db), rows):
        state = f"revoked {row.revoked_at:%Y-%m-%d}" if row.revoked_at else "active"
        typer.echo(f"{row.id}  {row.prefix}...  {row.role:<6}  {state:<18}  {row.name}")


@keys.command("revoke")
def keys_revoke(key_id: str, db: DbOption = None) -> None:
    """Revoke an API key by id; servers refuse it within seconds."""

    async def revoke(session: AsyncSession) -> bool:
        row = await session.get(ApiKey, key_id)
        if row is None:
            return False
        row.revoked_at = row.revoked_at or utcnow()
        session.add(row)
        await session.commit()
        return True

    if not _with_session(_database_url(db), revoke):
        raise fail(f"no API key {key_id!r}")
    typer.echo(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("migrate")(migrate)
    app.add_typer(keys, name="keys")
