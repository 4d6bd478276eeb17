"""The engine as a process-wide service: reserve, settle and release, plus the duties that keep
reservations from leaking (heart-beating, recovering dead processes' and expired reservations)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from sqlalchemy import delete, update
from sqlmodel import col, or_, select

from nullspend.attribution import TAG_EXPIRED, TAG_RECOVERED
from nullspend_server.auth import Principal
from nullspend_server.db.database import Database
from nullspend_server.db.tables import Reservation, ServerInstance, utcnow
from nullspend_server.engine.reserve import Admission, DeniedError, ReservationRequest, reserve
from nullspend_server.engine.settle import Settlement, release, settle, settle_abandoned
from nullspend_server.ids import new_id
from nullspend_server.settings import ServerSettings

log = logging.getLogger("nullspend.engine")
# A process that missed this many heartbeats is taken for dead and its reservations recovered.
MISSED_HEARTBEATS = 3
CHECKPOINT_SECONDS = 1.0
RECOVERY_BATCH = 500


class Engine:
    def __init__(self, db: Database, settings: ServerSettings) -> None:
        self.db = db
        self.settings = settings
        self.instance_id = new_id("inst")
        self._duties: list[asyncio.Task[None]] = []
        self._settling: set[asyncio.Task[None]] = set()

    async def reserve(self, principal: Principal, request: ReservationRequest) -> Admission:
        """Reserve the request's estimate, or raise DeniedError (after committing what the
        decision changed: period resets, a tripped velocity cooldown)."""
        now = utcnow()
        expires_at = now + dt.timedelta(seconds=self.settings.reservation_ttl_seconds)
        async with self.db.write_transaction() as db:
            outcome = await reserve(
                db, principal, request, now=now, expires_at=expires_at, instance_id=self.instance_id
            )
        if not isinstance(outcome, Admission):
            raise DeniedError(outcome)
        return outcome

    async def settle(self, org_id: str, reservation_id: str, settlement: Settlement) -> str:
        """Settle at the actual cost; returns the id of the cost event written."""
        async with self.db.write_transaction() as db:
            return await settle(db, org_id, reservation_id, settlement, utcnow())

    async def release(self, org_id: str, reservation_id: str) -> None:
        async with self.db.write_transaction() as db:
            await release(db, org_id, reservation_id, utcnow())

    def settle_later(self, org_id: str, reservation_id: str, settlement: Settlement | None) -> None:
        """Settle (or, with no settlement, release) off the request path: the caller's response
        does not wait for the transaction. If it fails, the reservation expires and is settled
        at its estimate, so nothing is lost; ``stop()`` waits for the ones in flight."""

        async def finish() -> None:
            try:
                if settlement is None:
                    await self.release(org_id, reservation_id)
                else:
                    await self.settle(org_id, reservation_id, settlement)
            except Exception:
                log.exception("settling reservation %s failed; it will expire", reservation_id)

        task = asyncio.get_running_loop().create_task(finish())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def start(self) -> None:
        """Register this process, recover what dead processes left, start the duties."""
        now = utcnow()
        async with self.db.write_session() as session:
            session.add(ServerInstance(id=self.instance_id, started_at=now, heartbeat_at=now))
            await session.commit()
        await self.recover()
        self._duties = [
            asyncio.create_task(self._run_duties()),
            asyncio.create_task(self.db.run_checkpoints(CHECKPOINT_SECONDS)),
        ]

    async def stop(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        for duty in self._duties:
            duty.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await duty
        # A clean stop: let the next recovery pass settle whatever this process left at once.
        async with self.db.write_session() as session:
            await session.execute(
                delete(ServerInstance).where(col(ServerInstance.id) == self.instance_id)
            )
            await session.commit()

    async def recover(self) -> int:
        """Settle at their estimate the active reservations that expired or whose process
        stopped heart-beating. Returns how many were settled."""
        now = utcnow()
        stale = now - dt.timedelta(seconds=self.settings.heartbeat_seconds * MISSED_HEARTBEATS)
        async with self.db.sessions() as session:
            live = select(ServerInstance.id).where(col(ServerInstance.heartbeat_at) >= stale)
            query = (
                select(Reservation.id, Reservation.expires_at)
                .where(col(Reservation.status) == "active")
                .where(
                    or_(
                        col(Reservation.expires_at) < now, col(Reservation.instance_id).not_in(live)
                    )
                )
                .limit(RECOVERY_BATCH)
            )
            candidates = list(await session.exec(query))
        settled = 0
        for reservation_id, expires_at in candidates:
            reason = TAG_EXPIRED if expires_at < now else TAG_RECOVERED
            async with self.db.write_transaction() as db:
                settled += await settle_abandoned(db, reservation_id, reason, utcnow())
        if settled:
            log.warning("settled %d abandoned reservations at their estimate", settled)
        return settled

    async def _run_duties(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                async with self.db.write_session() as session:
                    await session.execute(
                        update(ServerInstance)
                        .where(col(ServerInstance.id) == self.instance_id)
                        .values(heartbeat_at=utcnow())
                    )
                    await session.commit()
                await self.recover()
            except Exception:  # a database hiccup must not end the duties for good
                log.exception("engine duties failed; retrying at the next heartbeat")
