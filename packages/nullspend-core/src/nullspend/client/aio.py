"""``AsyncNullSpend``: the server API from asyncio code; the same calls as ``NullSpend``."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx

from nullspend.client import calls, processes
from nullspend.client.models import (
    Budget,
    BudgetStatus,
    CostEventPage,
    Extended,
    Introspection,
    NewCostEvent,
    RecordedBatch,
    RecordedEvent,
    Reservation,
    Settled,
)
from nullspend.client.sync import NullSpend
from nullspend.tracked.clients import AsyncTrackedClients
from nullspend.tracked.metering import Scope

T = TypeVar("T")


class AsyncNullSpend(AsyncTrackedClients):
    """``NullSpend`` for asyncio: the same calls, awaited; ``settle_later`` and
    ``release_later`` as ``NullSpend``'s, from a background thread."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: httpx.Timeout | float = calls.DEFAULT_TIMEOUT,
        max_retries: int = calls.DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.connection = calls.Connection.resolve(api_key, base_url)
        self.max_retries = max_retries
        self.scope = Scope()
        self._http = processes.PerLoop(lambda: httpx.AsyncClient(timeout=timeout), http_client)
        # Sends settle_later's work with a sync client of its own: a thread, not a task, so
        # that what is queued when the event loop ends (asyncio.run cancels its tasks) is still
        # sent, at exit if need be. Made here, so scoped copies (ns.customer(...)) share it.
        self._settler = _LoopsSettler(
            self.connection.api_key,
            self.connection.base_url,
            timeout=timeout,
            max_retries=max_retries,
            like=http_client,
        )

    @property
    def sync_client(self) -> NullSpend:
        """The synchronous client, on the same server with the same key (and an ``http_client``'s
        headers, auth and other settings httpx lets be read back), that sends this one's
        ``settle_later`` work: for code on a thread of its own (a ``CostReporter`` given this
        client sends with it). It has no scope (a scoped copy's is its original's); closing
        this client closes it."""
        return self._settler

    async def close(self) -> None:
        """Send what ``settle_later`` and ``release_later`` left queued, and what a
        ``CostReporter`` on this client holds, then close this event loop's connections (a
        loop that has ended can neither use nor close those it opened: they are dropped). A
        scoped copy (``customer``, ``scoped``) only sends, as ``NullSpend``'s does."""
        if self._scoped_copy:
            await self.flush()
            return
        await asyncio.to_thread(self._settler.close)
        await self._http.get().aclose()

    def settle_later(self, reservation_id: str, **options: Unpack[calls.SettleOptions]) -> None:
        """``settle`` from a background thread, returning at once (see
        ``NullSpend.settle_later``): the event loop never waits on it. Reads on this client
        wait for what is queued first."""
        self._settler.settle_later(reservation_id, **options)

    def release_later(self, reservation_id: str) -> None:
        """``release`` from the background thread, as ``settle_later``."""
        self._settler.release_later(reservation_id)

    def extend_later(self, reservation_id: str) -> None:
        """``extend`` from the background thread, as ``settle_later``."""
        self._settler.extend_later(reservation_id)

    async def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until what ``settle_later`` and ``release_later`` queued has been sent."""
        if self._settler.flush(timeout=0):  # nothing queued: no thread hop
            return True
        return await asyncio.to_thread(self._settler.flush, timeout)

    async def __aenter__(self) -> AsyncNullSpend:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, call: calls.Call[T], tries: calls.Tries | None = None) -> T:
        tries = tries or calls.Tries(self.max_retries)
        while True:
            try:
                return call.result(await self._attempt(call))
            except Exception as failure:
                if (earlier := call.earlier_result(tries.count, failure)) is not None:
                    return earlier
                if (wait := tries.wait_after(call, failure)) is None:
                    raise
            await asyncio.sleep(wait)

    async def _attempt(self, call: calls.Call[Any]) -> httpx.Response:
        try:
            return await self._http.get().request(**call.request(self.connection))
        except httpx.RequestError as error:  # no answer, or one that cannot be read
            raise calls.connection_failed(self.connection, error) from error

    async def introspect(self) -> Introspection:
        """The key's id, organization and role."""
        return await self._send(calls.introspect())

    async def budgets(self) -> list[Budget]:
        """Every budget of the organization, with its settings."""
        return await self._send(calls.budgets())

    async def budget_status(self) -> list[BudgetStatus]:
        """Every budget's limit, spend, reserved and remaining amounts in its current period."""
        await self.flush()
        return await self._send(calls.budget_status())

    async def reserve(
        self, estimate_microdollars: int | None = None, **options: Unpack[calls.ReserveOptions]
    ) -> Reservation:
        """Admit an estimate against every budget it is subject to, or raise the
        ``DeniedError`` that says why not. Give the estimate, or the provider ``request`` body
        (and ``model``) for the server to estimate it as the proxy does."""
        reservation_id = options.setdefault("reservation_id", calls.new_reservation_id())
        tries = calls.Tries(self.max_retries)
        try:
            return await self._send(calls.reserve(estimate_microdollars, **options), tries)
        except BaseException as error:  # a cancellation too: its answer is lost
            if tries.may_have_landed or not calls.refused(error):  # it may be held: give it back
                self._settler._release_if_made_later(reservation_id)
            raise

    async def reserve_id(
        self, estimate_microdollars: int | None = None, **options: Unpack[calls.ReserveOptions]
    ) -> str:
        """``reserve``, answering only the reservation's id, as ``NullSpend.reserve_id``."""
        return (await self.reserve(estimate_microdollars, **options)).reservation_id

    async def settle(self, reservation_id: str, **options: Unpack[calls.SettleOptions]) -> Settled:
        """Replace the estimate by the actual cost (``cost_microdollars``, or priced from
        ``usage``) and record the cost event."""
        return await self._send(calls.settle(reservation_id, **options))

    async def release(self, reservation_id: str) -> Settled:
        """Give the estimate back: the call did not happen."""
        return await self._send(calls.release(reservation_id))

    async def extend(self, reservation_id: str) -> Extended:
        """Give a reservation a full lifetime again from now (see ``NullSpend.extend``)."""
        return await self._send(calls.extend(reservation_id))

    async def report(
        self, event: NewCostEvent, *, idempotency_key: str | None = None
    ) -> RecordedEvent:
        """Record one call's cost. Retries are safe: the server records it once per key (one
        is made up when none is given)."""
        return await self._send(calls.report(event, idempotency_key))

    async def report_batch(
        self, events: list[NewCostEvent], *, idempotency_key: str | None = None
    ) -> RecordedBatch:
        """Record up to 100 events at once, all or none; retried as ``report`` is."""
        return await self._send(calls.report_batch(events, idempotency_key))

    async def cost_events(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        **filters: Unpack[calls.EventFilters],
    ) -> CostEventPage:
        """Recorded events, newest first, filtered; pass the page's ``cursor`` for the next."""
        await self.flush()
        return await self._send(calls.cost_events(limit, cursor, **filters))


class _LoopsSettler(NullSpend):
    """What sends an ``AsyncNullSpend``'s settles: its callers are on the event loop, which
    must never wait, so its queue grows past 10,000 (with a warning) rather than send there."""

    _caller_may_wait = False

    def __init__(
        self,
        api_key: str,
        base_url: str,
        *,
        timeout: httpx.Timeout | float,
        max_retries: int,
        like: httpx.AsyncClient | None,
    ) -> None:
        self._like = like
        super().__init__(api_key, base_url, timeout=timeout, max_retries=max_retries)

    def _new_http(self, timeout: httpx.Timeout | float) -> httpx.Client:
        if self._like is None:
            return super()._new_http(timeout)
        # The caller's client configured the way to the server (a gateway's token in its
        # headers, say): settles sent without it were refused, and their reservations were
        # charged their estimates.
        return _sync_like(self._like)


def _sync_like(given: httpx.AsyncClient) -> httpx.Client:
    """A synchronous client configured as ``given``, as far as httpx lets it be read back: its
    headers, auth, query parameters, cookies, timeout, redirects, and whether it takes proxies
    and CA certificates from the environment (a transport of its own cannot be copied)."""
    return httpx.Client(
        headers=given.headers,
        auth=given.auth,
        params=given.params,
        cookies=given.cookies,
        timeout=given.timeout,
        follow_redirects=given.follow_redirects,
        trust_env=given.trust_env,
    )
