"""Forked processes (gunicorn's preloaded workers, multiprocessing's fork start): a thread does
not survive ``fork()``, pooled connections would be sockets shared with the parent, and a child
that multiprocessing started ends with ``os._exit``, which skips ``atexit``."""

from __future__ import annotations

import multiprocessing.util
import os
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

_at_child_exit: list[Callable[[], None]] = []


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
