"""Requests per minute per API key, counted in this process (a fixed one-minute window). A
proxied call and an SDK reservation are each one request: the two ways into a provider call
share one count."""

from __future__ import annotations

import time

from nullspend.errors import ErrorCode
from nullspend_server.errors import ApiError


class RateLimiter:
    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._window = 0
        self._counts: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None when admitted, else the seconds until the next window."""
        now = time.time()
        window = int(now // 60)
        if window != self._window:
            self._window, self._counts = window, {}
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        if count > self.per_minute:
            return max(1, int((window + 1) * 60 - now))
        return None

    def enforce(self, key: str) -> None:
        """Count a request of ``key``, or raise ``rate_limited`` with its Retry-After."""
        if (wait := self.admit(key)) is not None:
            raise ApiError(
                ErrorCode.RATE_LIMITED,
                f"more than {self.per_minute} requests a minute",
                headers={"Retry-After": str(wait)},
            )
