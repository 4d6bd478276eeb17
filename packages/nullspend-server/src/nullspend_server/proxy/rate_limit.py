"""Requests per minute per API key, counted in this process (a fixed one-minute window)."""

from __future__ import annotations

import time


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
