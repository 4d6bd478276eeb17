"""``Renewal``: a long call keeps its reservation. A reservation lives a set time (the server's
``NULLSPEND_RESERVATION_TTL_SECONDS``, 10 minutes by default; an hour in-process), after which
it is charged its estimate and the call's real settle is refused. A stream can outlast that
(a provider's timeout is per chunk), so a metered stream renews its reservation while its
chunks arrive. A call that stopped (cancelled, or its stream left unread) renews nothing and
expires as before."""

from __future__ import annotations

import time
from typing import Protocol

RENEW_SECONDS = 60.0
"""How long after its reservation (or its last renewal) a call that still hears chunks renews
it: well inside the server's default TTL, so a stream silent for up to the TTL less this is
kept too."""


class Extends(Protocol):
    """What a renewal is sent through: any of the clients (server or in-process)."""

    def extend_later(self, reservation_id: str) -> None: ...


class Renewal:
    """When the call holding ``reservation_id`` renews it next: at the first chunk heard
    ``RENEW_SECONDS`` after ``since`` (its reservation, a ``time.perf_counter()``) or after the
    renewal before. One clock read per chunk; the renewal itself is sent off the call's path."""

    __slots__ = ("client", "due", "reservation_id")

    def __init__(self, client: Extends, reservation_id: str, since: float) -> None:
        self.client = client
        self.reservation_id = reservation_id
        self.due = since + RENEW_SECONDS

    def heard(self) -> None:
        """A chunk of the call came: it is still going."""
        now = time.perf_counter()
        if now >= self.due:
            self.due = now + RENEW_SECONDS
            self.client.extend_later(self.reservation_id)
