"""``CostReporter``: cost events reported in the background, so the caller never waits on
NullSpend. A bounded queue, drained by one thread in batches of at most 100, on an interval and
at interpreter exit; a batch that fails is retried (each batch carries its own idempotency key,
so a retry after a lost answer records it once); what could not be queued or sent is counted."""

from __future__ import annotations

import atexit
import collections
import inspect
import logging
import math
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, cast

from nullspend.client import processes
from nullspend.client.calls import wait_before_retry
from nullspend.client.models import MAX_BATCH, NewCostEvent, RecordedBatch
from nullspend.errors import PayloadTooLargeError, ValidationError

if TYPE_CHECKING:
    from nullspend.client.aio import AsyncNullSpend
    from nullspend.embedded import AsyncLocalNullSpend

log = logging.getLogger("nullspend.reporter")
_live: weakref.WeakSet[CostReporter] = weakref.WeakSet()


class BatchRecorder(Protocol):
    """What the reporter sends with: ``NullSpend``, or ``LocalNullSpend`` with no server."""

    def report_batch(
        self, events: list[NewCostEvent], *, idempotency_key: str | None = None
    ) -> RecordedBatch: ...


@dataclass(frozen=True)
class ReporterStats:
    queued: int
    """Waiting to be sent."""
    sent: int
    dropped_full: int
    """Refused by ``report`` because the queue was full."""
    dropped_failed: int
    """Given up on after every retry failed."""


class CostReporter:
    """``report(event)`` returns at once; a daemon thread sends.

    ``interval`` seconds between sends when fewer than ``batch_size`` events wait (a full batch
    goes at once); ``max_queue`` events wait at most; a failed batch is tried ``attempts`` times
    in all, with backoff, when its failure is worth retrying (each send also retries as
    ``NullSpend`` does), before it is dropped and counted.
    ``close()`` (also run at interpreter exit) sends what is left. Given an asyncio client
    (``AsyncNullSpend``, ``AsyncLocalNullSpend``), it sends with that client's synchronous
    twin, which ``client`` then is.
    """

    def __init__(
        self,
        client: BatchRecorder | AsyncNullSpend | AsyncLocalNullSpend,
        *,
        interval: float = 1.0,
        batch_size: int = MAX_BATCH,
        max_queue: int = 10_000,
        attempts: int = 3,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH}")
        # An interval of 0 made the idle thread spin on the CPU; 0 attempts sent nothing, yet
        # counted nothing as dropped either.
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError("interval must be a number of seconds above 0")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.client = _synchronous(client)
        self.interval = interval
        self.batch_size = batch_size
        self.max_queue = max_queue
        self.attempts = attempts
        self._closed = False
        self._begin()
        atexit.register(self._close_at_exit)
        _live.add(self)

    def _begin(self) -> None:
        """A fresh queue and the thread that sends it: at the start, and in a forked child
        (the parent's thread does not exist there; what it had queued is the parent's to send)."""
        self._queue: collections.deque[NewCostEvent] = collections.deque()
        self._wake = threading.Condition()
        self._idle = threading.Event()
        self._idle.set()
        self._sent = self._dropped_full = self._dropped_failed = 0
        self._sending = 0  # the batch being sent: still to send until it is sent or dropped
        self._flushing = False  # flush() asked: send what waits without waiting the interval
        self._thread = threading.Thread(target=self._run, name="nullspend-reporter", daemon=True)
        if not self._closed:
            self._thread.start()

    def report(self, event: NewCostEvent) -> bool:
        """Queue ``event``; False (and counted) when the queue is full or the reporter closed."""
        with self._wake:
            if self._closed or len(self._queue) >= self.max_queue:
                self._dropped_full += 1
                return False
            self._queue.append(event)
            self._idle.clear()
            if len(self._queue) >= self.batch_size:
                self._wake.notify()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Send what is queued now and wait until it is sent (or given up on); False if
        ``timeout`` ran out first."""
        with self._wake:
            # Kept until the queue is empty: a wake-up alone is lost on a thread that is sending
            # a batch, which then waited the interval before sending the rest.
            self._flushing = True
            self._wake.notify()
        return self._idle.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Send what is left, then stop; what ``timeout`` leaves unsent is logged."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)
        atexit.unregister(self._close_at_exit)
        with self._wake:
            unsent = len(self._queue) + self._sending
        if unsent:
            log.warning("%d cost events were not sent before closing", unsent)

    def _close_at_exit(self) -> None:
        self.close(timeout=processes.exit_time_left())

    @property
    def stats(self) -> ReporterStats:
        with self._wake:
            return ReporterStats(
                len(self._queue) + self._sending,
                self._sent,
                self._dropped_full,
                self._dropped_failed,
            )

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._queue and not self._closed:
                    self._flushing = False
                    self._idle.set()
                    self._wake.wait(self.interval)
                elif len(self._queue) < self.batch_size and not (self._closed or self._flushing):
                    self._wake.wait(self.interval)
                batch = [
                    self._queue.popleft() for _ in range(min(self.batch_size, len(self._queue)))
                ]
                self._sending = len(batch)
                closing = self._closed
            if batch:
                self._send(batch)
            elif closing:
                self._idle.set()
                return

    def _send(self, batch: list[NewCostEvent]) -> None:
        key = uuid.uuid4().hex  # one per batch, for every attempt
        for attempt in range(self.attempts):
            try:
                self.client.report_batch(batch, idempotency_key=key)
            except Exception as error:  # whatever it is, the thread must live on and count it
                wait = wait_before_retry(attempt, error)
                log.warning("reporting %d cost events failed (%s)", len(batch), error)
                if isinstance(error, ValidationError | PayloadTooLargeError) and len(batch) > 1:
                    # A batch is recorded all or none: one bad event must not cost the others,
                    # nor a proxy's body limit (nginx's 1 MB) that the whole batch is over.
                    for event in batch:
                        self._send([event])
                    return
                if wait is None or attempt + 1 == self.attempts:  # hopeless, or tried enough
                    with self._wake:
                        self._dropped_failed += len(batch)
                        self._sending -= len(batch)
                    return
                time.sleep(wait)
                continue
            with self._wake:
                self._sent += len(batch)
                self._sending -= len(batch)
            return


def _synchronous(client: BatchRecorder | AsyncNullSpend | AsyncLocalNullSpend) -> BatchRecorder:
    """What the reporter's thread sends with: no thread awaits an asyncio client's
    ``report_batch``, so its synchronous twin (``sync_client``)."""
    sync = cast(BatchRecorder, getattr(client, "sync_client", client))
    if inspect.iscoroutinefunction(sync.report_batch):
        raise TypeError(
            f"a CostReporter sends from a thread of its own, which cannot await "
            f"{type(sync).__name__}.report_batch: give it a synchronous client"
        )
    return sync


def _begin_all_in_child() -> None:
    for reporter in list(_live):
        reporter._begin()


def _close_all() -> None:
    for reporter in list(_live):
        reporter.close(timeout=processes.exit_time_left())


def close_reporters_of(client: object) -> None:
    """Close the reporters that send through ``client``, sending what they hold: its
    ``close()`` calls this first, so what was reported inside ``with NullSpend() as ns:`` is
    sent before the connection goes."""
    for reporter in list(_live):
        if reporter.client is client:
            reporter.close()


processes.after_fork_in_child(_begin_all_in_child)
processes.at_child_exit(_close_all)
