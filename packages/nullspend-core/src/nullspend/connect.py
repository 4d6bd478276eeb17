"""One call that gives the integrations (and you) a NullSpend: the server's client when a server
is configured, else the in-process engine. Which it is depends on configuration alone, so the
same code runs in a notebook (embedded, a cap in one line) and in production (a server)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nullspend.client import AsyncNullSpend, NullSpend
from nullspend.embedded import AsyncLocalNullSpend, LocalBudget, LocalNullSpend
from nullspend.settings import CoreSettings


def connect(
    api_key: str | None = None,
    base_url: str | None = None,
    *,
    budgets: Iterable[LocalBudget] = (),
    path: str | Path | None = None,
) -> NullSpend | LocalNullSpend:
    """``NullSpend(api_key, base_url)`` when a key or a server is given (as arguments or as
    ``NULLSPEND_API_KEY`` / ``NULLSPEND_BASE_URL``), else ``LocalNullSpend(budgets, path=path)``.

    >>> ns = connect(budgets=[LocalBudget.total(5_000_000)])  # no server set: a $5 cap in-process
    """
    budgets = tuple(budgets)
    if _server_configured(api_key, base_url, budgets, path):
        return NullSpend(api_key, base_url)
    return LocalNullSpend(budgets, path=path)


def connect_async(
    api_key: str | None = None,
    base_url: str | None = None,
    *,
    budgets: Iterable[LocalBudget] = (),
    path: str | Path | None = None,
) -> AsyncNullSpend | AsyncLocalNullSpend:
    """``connect`` for asyncio code: ``AsyncNullSpend`` or ``AsyncLocalNullSpend``."""
    budgets = tuple(budgets)
    if _server_configured(api_key, base_url, budgets, path):
        return AsyncNullSpend(api_key, base_url)
    return AsyncLocalNullSpend(budgets, path=path)


def _server_configured(
    api_key: str | None,
    base_url: str | None,
    budgets: tuple[LocalBudget, ...],
    path: str | Path | None,
) -> bool:
    """A key alone still means a server (a missing URL is then an error, never a silent switch
    to in-process budgets); budgets declared in code with a server configured are refused."""
    settings = CoreSettings()
    server = bool(api_key or base_url or settings.api_key or settings.base_url)
    if server and (budgets or path is not None):
        raise ValueError(
            "a NullSpend server is configured (arguments, NULLSPEND_API_KEY or "
            "NULLSPEND_BASE_URL): its budgets apply, not budgets or a path declared in code"
        )
    return server


__all__ = ["connect", "connect_async"]
