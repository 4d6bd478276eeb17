"""``Background``: a client's settles and releases sent from one daemon thread, in order, so a
provider's answer is the caller's as soon as it arrives and NullSpend's bookkeeping follows.
Until a settle lands its reservation holds the estimate, so budgets stay enforced meanwhile.
Nothing is dropped: when the queue is full the work runs on the caller's thread, unless that
thread must never wait (an event loop's): then the queue grows, with a warning; ``close()`` (and
interpreter exit) sends what is left."""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable

from nullspend.client import processes
from nullspend.errors import ConflictError

log = logging.getLogger("nullspend.client")
# The thread ends after this long with nothing to do (and starts again when needed), so a client
# dropped without close() leaves no thread behind.
IDLE_SECONDS = 2.0

_live: weakref.WeakSet[Background] = weakref.WeakSet()
# Queued by close(): no work, only a wake-up for the thread to see it has nothing left to do.
_WAKE: tuple[None, str] = (None, "")


class Background:
    def __init__(self, max_queue: int = 10_000, *, caller_may_wait: bool = True) -> None:
        self._max_queue = max_queue
        self._caller_may_wait = caller_may_wait
        # Unbounded: the bound is kept in submit(), where a caller that must not wait is known.
        self._queue: queue.Queue[tuple[Callable[[], object] | None, str]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        _live.add(self)

    @property
    def pending(self) -> int:
        return self._queue.unfinished_tasks

    def submit(
        self,
        work: Callable[[], object],
        description: str,
        inline: Callable[[], object] | None = None,
    ) -> None:
        """Run ``work`` on the background thread; ``description`` names it in a failure's log.
        With the queue full, on the caller's thread (never dropped: a lost settle would be
        charged at its estimate), unless that thread must never wait: an event loop's (an
        ``AsyncNullSpend``'s caller, or a sync client's called from async code, as the LlamaIndex
        gate settles). Then the queue grows, with a warning at every ``max_queue``. ``inline``
        is what the caller's thread runs in ``work``'s place (the caller's own retries, not the
        background thread's longer ones)."""
        waiting = self._queue.qsize()
        if waiting >= self._max_queue:
            if self._caller_may_wait and asyncio._get_running_loop() is None:
                attempt(inline or work, description)
                return
            if waiting % self._max_queue == 0:
                log.warning(
                    "%d settles and releases wait to be sent: is the NullSpend server slow or "
                    "down?",
                    waiting,
                )
        self._queue.put_nowait((work, description))
        self._started()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted so far has been sent; False on timeout."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(
                lambda: self._queue.unfinished_tasks == 0, timeout
            )

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued, and let the thread end now rather than once idle: at
        interpreter exit no thread of ours is left running while the interpreter is torn down.
        Work submitted later starts a new one. What ``timeout`` (in all) leaves unsent is
        logged: those reservations expire and are charged their estimate."""
        deadline = time.monotonic() + timeout
        if not self.flush(timeout):
            log.warning(
                "%d settles and releases were not sent before closing (is the NullSpend "
                "server down?): their reservations will expire and be charged their estimate",
                self.pending,
            )
            return  # the thread is busy with them: a daemon, it ends with the process
        with self._start:  # the thread decides to end under it: it will see the wake-up
            thread = self._thread
            if thread is None:
                return
            self._queue.put_nowait(_WAKE)
        thread.join(max(deadline - time.monotonic(), 0.0))

    def _after_fork_in_child(self) -> None:
        """The parent's thread does not exist here, and what it had queued is the parent's to
        send: start afresh."""
        self._queue = queue.Queue()
        self._thread = None
        self._start = threading.Lock()

    def _started(self) -> None:
        # Under the lock, always: the thread decides to end under it too, so work queued as it
        # ends is either seen by it or starts a new one.
        with self._start:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="nullspend-background", daemon=True
                )
                self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                work, description = self._queue.get(timeout=IDLE_SECONDS)
            except queue.Empty:
                pass
            else:
                try:
                    if work is not None:
                        attempt(work, description)
                        continue
                finally:
                    self._queue.task_done()
            with self._start:  # idle, or woken by close(): end unless work came meanwhile
                if self._queue.unfinished_tasks == 0:
                    self._thread = None
                    return


def attempt(work: Callable[[], object], description: str) -> None:
    """``work()``, a failure logged rather than raised: what every ``settle_later`` promises."""
    try:
        work()
    except Exception as error:  # the caller has its answer; the reservation will expire
        log_failure(description, error)


def log_failure(description: str, error: Exception) -> None:
    if isinstance(error, ConflictError) and error.details.get("status") == "expired":
        # Its call outlived the reservation: the expiry charged the estimate in its place.
        log.warning(
            "%s came after its reservation expired, which charged the call its estimate",
            description,
        )
        return
    log.warning("%s failed (%s); the reservation will expire", description, error)


@atexit.register
def _close_all() -> None:
    for background in list(_live):
        background.close(timeout=processes.exit_time_left())


def _reset_all_in_child() -> None:
    for background in list(_live):
        background._after_fork_in_child()


processes.after_fork_in_child(_reset_all_in_child)
processes.at_child_exit(_close_all)
