"""The engine as a process-wide service: reserve, settle and release, plus the duties that keep
reservations from leaking (heart-beating, recovering dead processes' and expired reservations)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import and_, col, or_, select

from nullspend.attribution import TAG_EXPIRED, TAG_RECOVERED
from nullspend.policy.denials import Denial
from nullspend_server.auth import Principal
from nullspend_server.db.database import Database
from nullspend_server.db.tables import Reservation, ServerInstance, utcnow
from nullspend_server.engine.reserve import Admission, DeniedError, ReservationRequest, reserve
from nullspend_server.engine.settle import (
    Settlement,
    extend,
    release,
    settle,
    settle_abandoned,
)
from nullspend_server.errors import ApiError
from nullspend_server.ids import new_id
from nullspend_server.settings import ServerSettings

log = logging.getLogger("nullspend.engine")
# A process that missed this many heartbeats is taken for dead and its reservations recovered.
MISSED_HEARTBEATS = 3
CHECKPOINT_SECONDS = 1.0
# At most this many settlements share one SQLite transaction.
SQLITE_SETTLE_BATCH = 100
RECOVERY_BATCH = 500


@dataclass(frozen=True, slots=True)
class _Pending:
    org_id: str
    id: str
    settlement: Settlement | None
    """None: release (the call cost nothing)."""


class HeldCall(Protocol):
    """A call in flight whose reservation its process keeps from expiring."""

    blocked_since: float | None
    """When a send to its client began that has not returned (``time.monotonic()``)."""


class Engine:
    def __init__(self, db: Database, settings: ServerSettings) -> None:
        self.db = db
        self.settings = settings
        self.instance_id = new_id("inst")
        self._duties: list[asyncio.Task[None]] = []
        self._pending: list[_Pending] = []
        self._settler: asyncio.Task[None] | None = None
        # This process's calls in flight, by reservation: kept from expiring while they live.
        self._held: weakref.WeakValueDictionary[str, HeldCall] = weakref.WeakValueDictionary()

    def hold(self, reservation_id: str, call: HeldCall) -> None:
        """Keep ``reservation_id`` from expiring while ``call`` lives and its client reads: a
        proxied stream may outlast the reservation TTL (the upstream timeout is per chunk), and
        expired it was charged its estimate and its real settle refused. A client that has not
        taken a chunk for the TTL (reading nothing, its connection open) is not waited for."""
        self._held[reservation_id] = call

    async def reserve(self, principal: Principal, request: ReservationRequest) -> Admission:
        """Reserve the request's estimate, or raise DeniedError (after committing what the
        decision changed: period resets, a tripped velocity cooldown)."""
        now = utcnow()
        expires_at = self._expiry(now)

        async def attempt() -> Admission | Denial:
            async with self.db.write_transaction() as db:
                return await reserve(
                    db,
                    principal,
                    request,
                    now=now,
                    expires_at=expires_at,
                    instance_id=self.instance_id,
                )

        try:
            outcome = await attempt()
        except IntegrityError:
            if request.reservation_id is None:
                raise
            # The same request, sent again, raced its first try in: answer what that made.
            outcome = await attempt()
        if not isinstance(outcome, Admission):
            raise DeniedError(outcome)
        return outcome

    async def settle(self, org_id: str, reservation_id: str, settlement: Settlement) -> str:
        """Settle at the actual cost; returns the id of the cost event written."""
        async with self.db.write_transaction() as db:
            return await settle(db, org_id, reservation_id, settlement, utcnow())

    async def extend(self, org_id: str, reservation_id: str) -> dt.datetime:
        """Give an active reservation a full TTL again from now; answers its new expiry."""
        expires_at = self._expiry(utcnow())
        async with self.db.write_transaction() as db:
            await extend(db, org_id, reservation_id, expires_at)
        return expires_at

    def _expiry(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.settings.reservation_ttl_seconds)

    async def release(self, org_id: str, reservation_id: str, key_id: str | None = None) -> None:
        """Give the estimate back; ``key_id``: a client's release (see ``settle.release``)."""
        try:
            async with self.db.write_transaction() as db:
                await release(db, org_id, reservation_id, utcnow(), key_id)
        except IntegrityError:  # its reserve landed meanwhile: release that
            async with self.db.write_transaction() as db:
                await release(db, org_id, reservation_id, utcnow())

    def settle_later(self, org_id: str, reservation_id: str, settlement: Settlement | None) -> None:
        """Settle (or, with no settlement, release) off the request path: the caller's response
        does not wait for the transaction. If it fails, the reservation expires and is settled
        at its estimate, so nothing is lost; ``stop()`` waits for what is queued."""
        self._pending.append(_Pending(org_id, reservation_id, settlement))
        if self._settler is None or self._settler.done():
            self._settler = asyncio.get_running_loop().create_task(self._settle_pending())

    async def _settle_pending(self) -> None:
        """Drain the queue, several settlements per transaction where that is safe: on SQLite
        (one writer at a time) a transaction's begin and commit are much of a settlement's
        cost. On PostgreSQL one transaction each, because a batch would lock the budgets of
        several calls out of one global order, and two processes could deadlock."""
        batch_size = SQLITE_SETTLE_BATCH if self.db.is_sqlite else 1
        while self._pending:
            batch = self._pending[:batch_size]
            del self._pending[:batch_size]
            if len(batch) == 1:
                await self._settle_alone(batch[0])
                continue
            try:
                await self._settle_batch(batch)
            except Exception:
                for one in batch:  # one bad settlement must not take the others with it
                    await self._settle_alone(one)

    async def _settle_alone(self, one: _Pending) -> None:
        try:
            await self._settle_batch([one])
        except ApiError as refused:  # settled, released or expired already: nothing to undo
            log.warning("settling reservation %s was refused: %s", one.id, refused.message)
        except Exception:
            log.exception("settling reservation %s failed; it will expire", one.id)

    async def _settle_batch(self, batch: list[_Pending]) -> None:
        async with self.db.write_transaction() as db:
            now = utcnow()
            for one in batch:
                if one.settlement is None:
                    await release(db, one.org_id, one.id, now)
                else:
                    await settle(db, one.org_id, one.id, one.settlement, now)

    async def start(self) -> None:
        """Register this process, recover what dead processes left, start the duties."""
        now = utcnow()
        async with self.db.write_session() as session:
            session.add(ServerInstance(id=self.instance_id, started_at=now, heartbeat_at=now))
            await session.commit()
        await self.recover()
        self._duties = [
            asyncio.create_task(self._beat()),
            asyncio.create_task(self._recover_duty()),
            asyncio.create_task(self.db.run_checkpoints(CHECKPOINT_SECONDS)),
        ]

    async def stop(self) -> None:
        if self._settler is not None:
            await self._settler
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
        """Settle at their estimate the active reservations that expired, and the proxy's
        whose process stopped heart-beating (the call went with it). A reservation made
        through the API is its client's to settle, through any process: only its expiry
        abandons it. Returns how many were settled."""
        now = utcnow()
        stale = now - dt.timedelta(seconds=self.settings.heartbeat_seconds * MISSED_HEARTBEATS)
        async with self.db.sessions() as session:
            live = select(ServerInstance.id).where(col(ServerInstance.heartbeat_at) >= stale)
            query = (
                select(Reservation.id, Reservation.expires_at)
                .where(col(Reservation.status) == "active")
                .where(
                    or_(
                        col(Reservation.expires_at) < now,
                        and_(
                            col(Reservation.source) == "proxy",
                            col(Reservation.instance_id).not_in(live),
                        ),
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

    async def _beat(self) -> None:
        """Heart-beat, and push back the expiry of the reservations this process's calls still
        hold. Apart from recovery, which may wait on a busy database: a late heart-beat makes
        the other processes settle this one's calls in flight at their estimate."""
        interval = self.settings.heartbeat_seconds
        while True:
            await asyncio.sleep(interval)
            now = utcnow()
            stalled = time.monotonic() - self.settings.reservation_ttl_seconds
            held = [
                reservation_id
                for reservation_id, call in list(self._held.items())
                if call.blocked_since is None or call.blocked_since > stalled
            ]
            try:
                async with self.db.duty_session() as session:
                    await session.execute(
                        update(ServerInstance)
                        .where(col(ServerInstance.id) == self.instance_id)
                        .values(heartbeat_at=now)
                    )
                    soon = now + dt.timedelta(seconds=interval * MISSED_HEARTBEATS)
                    later = self._expiry(now)
                    for start in range(0, len(held), RECOVERY_BATCH):
                        await session.execute(
                            update(Reservation)
                            .where(col(Reservation.id).in_(held[start : start + RECOVERY_BATCH]))
                            .where(col(Reservation.status) == "active")
                            .where(col(Reservation.expires_at) < soon)
                            .values(expires_at=later)
                        )
                    await session.commit()
            except Exception:  # a database hiccup must not end the duty for good
                log.exception("the heart-beat failed; retrying at the next one")

    async def _recover_duty(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self.recover()
            except Exception:  # a database hiccup must not end the duty for good
                log.exception("recovering reservations failed; retrying at the next heartbeat")
