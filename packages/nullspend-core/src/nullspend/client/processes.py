"""Forked processes (gunicorn's preloaded workers, multiprocessing's fork start): a thread does
not survive ``fork()``, pooled connections would be sockets shared with the parent, and a child
that multiprocessing started ends with ``os._exit``, which skips ``atexit``."""

from __future__ import annotations

import asyncio
import multiprocessing.util
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

EXIT_SECONDS = 10.0
"""What the work left at exit (reporters' events, queued settles) may take in all, however many
clients hold some: a process being stopped (a deployment's 30 s grace) must not hang on a
NullSpend server that is down."""
_at_child_exit: list[Callable[[], None]] = []
_exit_deadline: float | None = None


def exit_time_left() -> float:
    """Seconds left of ``EXIT_SECONDS``, counted from the first call: the exit handlers share
    them."""
    global _exit_deadline
    if _exit_deadline is None:
        _exit_deadline = time.monotonic() + EXIT_SECONDS
    return max(_exit_deadline - time.monotonic(), 0.0)


class _Anchor:
    """What multiprocessing's after-fork registry holds, weakly, for this module."""


_ANCHOR = _Anchor()


def _finalize_at_exit(_: object) -> None:
    for close in _at_child_exit:
        multiprocessing.util.Finalize(None, close, exitpriority=0)


# Run in a multiprocessing child as it starts, after it has cleared the finalizers it inherited.
multiprocessing.util.register_after_fork(_ANCHOR, _finalize_at_exit)


def after_fork_in_child(reset: Callable[[], None]) -> None:
    """Run ``reset`` in every child this process forks, as the child starts."""
    os.register_at_fork(after_in_child=reset)


def at_child_exit(close: Callable[[], None]) -> None:
    """Run ``close`` when a child that multiprocessing forked ends (``atexit`` covers the rest)."""
    _at_child_exit.append(close)


class PerProcess(Generic[T]):
    """A value this process made, made again in a forked child: an HTTP client, whose pooled
    connections are sockets shared with the parent (two processes talking on one socket read
    each other's answers). One given by the caller is the caller's to manage: kept as is."""

    def __init__(self, make: Callable[[], T], given: T | None = None) -> None:
        self._make = make
        self._given = given
        self._pid = os.getpid()
        self._value = given if given is not None else make()

    def get(self) -> T:
        if self._given is None and self._pid != os.getpid():
            self._value = self._make()  # the parent's is left alone
            self._pid = os.getpid()
        return self._value


class PerLoop(Generic[T]):
    """A value made for each running event loop, and again in a forked child: an
    ``httpx.AsyncClient``, whose pooled connections belong to the loop that opened them (the
    next ``asyncio.run()`` cannot use the last one's). One given by the caller is kept as is."""

    def __init__(self, make: Callable[[], T], given: T | None = None) -> None:
        self._make = make
        self._given = given
        self._values: PerProcess[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T]] = (
            PerProcess(weakref.WeakKeyDictionary)
        )
        self._making = threading.Lock()

    def get(self) -> T:
        """The running loop's value (outside one, RuntimeError)."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        values = self._values.get()
        if (value := values.get(loop)) is not None:
            return value
        with self._making:  # loops on other threads may make theirs meanwhile
            for ended in [other for other in values if other.is_closed()]:
                # Useless now, and what it holds may refer to its loop, keeping the key alive.
                del values[ended]
            value = values[loop] = self._make()
        return value
