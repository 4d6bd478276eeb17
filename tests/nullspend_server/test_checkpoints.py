"""SQLite's WAL is copied back and started over by the checkpoint duty, in a worker thread: no
connection of the server checkpoints as it commits, and the write that starts the WAL over
(which fsyncs its new header) is the duty's own, never a request's."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from nullspend_server.db.database import Database
from nullspend_server.db.tables import Organization, utcnow
from tests.nullspend_server.dbtools import rows

ORGANIZATIONS = Organization.__table__  # type: ignore[attr-defined]


def wal_frames(path: Path) -> int:
    """Frames in the WAL, read without copying any (a checkpoint that may not wait for the
    reader it itself holds copies nothing)."""
    with sqlite3.connect(path, isolation_level=None) as reader:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM organizations").fetchone()
        with sqlite3.connect(path, isolation_level=None) as other:
            (_busy, frames, _copied) = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        reader.execute("COMMIT")
    return int(frames)


def test_the_duty_starts_the_wal_over_itself(sqlite_template: Path, tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    path.write_bytes(sqlite_template.read_bytes())
    url = f"sqlite:///{path}"

    async def scenario() -> tuple[int, int]:
        db = Database(url)
        try:
            for n in range(2000):  # far past SQLite's own autocheckpoint of 1,000 pages
                async with db.write_transaction() as tx:
                    row = {"id": f"org_{n}", "name": "x" * 3000, "created_at": utcnow()}
                    await tx.execute(ORGANIZATIONS.insert(), row)
            before = wal_frames(path)  # no connection of the server checkpointed meanwhile
            duty = asyncio.create_task(db.run_checkpoints(0.05))
            await asyncio.sleep(0.5)
            duty.cancel()
            return before, wal_frames(path)
        finally:
            await db.dispose()

    before, after = asyncio.run(scenario())
    assert before > 2000
    # Started over by the duty's own one-page write, with no write of ours since.
    assert after == 1
    assert len(rows(url, "SELECT id FROM organizations WHERE id LIKE 'org_%'")) == 2000
