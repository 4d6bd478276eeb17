"""``NullSpend``: the server API from synchronous code."""

from __future__ import annotations

import contextlib
import functools
import time
from types import TracebackType
from typing import Any, ClassVar, TypeVar, Unpack

import httpx

from nullspend.client import calls, processes
from nullspend.client.background import Background
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
from nullspend.client.reporter import close_reporters_of
from nullspend.errors import NotFoundError
from nullspend.tracked.clients import TrackedClients
from nullspend.tracked.metering import Scope

T = TypeVar("T")


class NullSpend(TrackedClients):
    """A client of a NullSpend server: cost events, budgets, reservations, introspection.

    ``api_key`` and ``base_url`` default to ``NULLSPEND_API_KEY`` and ``NULLSPEND_BASE_URL``.
    Every error answer raises its typed ``nullspend.errors.ApiError``; calls that are safe to
    repeat (reads, and reports with their idempotency key) are retried with backoff on
    connection failures, 502-504, ``budget_unavailable`` and ``rate_limited``.
    """

    # With 10,000 settles waiting, the next is sent on the caller's thread (backpressure).
    _caller_may_wait: ClassVar[bool] = True

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        *,
        timeout: httpx.Timeout | float = calls.DEFAULT_TIMEOUT,
        max_retries: int = calls.DEFAULT_MAX_RETRIES,
        http_client: httpx.Client | None = None,
    ) -> None:
        self.connection = calls.Connection.resolve(api_key, base_url)
        self.max_retries = max_retries
        self.scope = Scope()
        self._http = processes.PerProcess(lambda: self._new_http(timeout), http_client)
        self._background = Background(caller_may_wait=self._caller_may_wait)

    def _new_http(self, timeout: httpx.Timeout | float) -> httpx.Client:
        """The HTTP client this process sends with, where the caller gave none."""
        return httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Send what ``settle_later`` and ``release_later`` left queued, and what a
        ``CostReporter`` on this client holds, then disconnect. A scoped copy (``customer``,
        ``scoped``) only sends: the connection and the queue are its original's to close."""
        close_reporters_of(self)
        if self._scoped_copy:
            self.flush()
            return
        self._background.close()
        self._http.get().close()

    def __enter__(self) -> NullSpend:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: calls.Call[T], tries: calls.Tries | None = None) -> T:
        tries = tries or calls.Tries(self.max_retries)
        while True:
            try:
                return call.result(self._attempt(call))
            except Exception as failure:
                if (earlier := call.earlier_result(tries.count, failure)) is not None:
                    return earlier
                if (wait := tries.wait_after(call, failure)) is None:
                    raise
            time.sleep(wait)

    def _later(
        self, call: calls.Call[Any], description: str, missing_ok: type[Exception] | None = None
    ) -> None:
        """Send ``call`` from the background thread, which no caller waits on: tried for longer
        (``calls.BACKGROUND_RETRIES``), so a server restart does not turn an answered call into
        an estimate charged at its reservation's expiry. Sent on the caller's thread instead
        (the queue full), with the caller's own retries. ``missing_ok``: an error that is no
        failure."""

        def send(retries: int) -> None:
            with contextlib.suppress(*((missing_ok,) if missing_ok else ())):
                self._send(call, calls.Tries(retries))

        self._background.submit(
            functools.partial(send, calls.BACKGROUND_RETRIES),
            description,
            inline=functools.partial(send, self.max_retries),
        )

    def _attempt(self, call: calls.Call[Any]) -> httpx.Response:
        try:
            return self._http.get().request(**call.request(self.connection))
        except httpx.RequestError as error:  # no answer, or one that cannot be read
            raise calls.connection_failed(self.connection, error) from error

    def introspect(self) -> Introspection:
        """The key's id, organization and role."""
        return self._send(calls.introspect())

    def budgets(self) -> list[Budget]:
        """Every budget of the organization, with its settings."""
        return self._send(calls.budgets())

    def budget_status(self) -> list[BudgetStatus]:
        """Every budget's limit, spend, reserved and remaining amounts in its current period."""
        self.flush()
        return self._send(calls.budget_status())

    def reserve(
        self, estimate_microdollars: int | None = None, **options: Unpack[calls.ReserveOptions]
    ) -> Reservation:
        """Admit an estimate against every budget it is subject to, or raise the
        ``DeniedError`` that says why not. Give the estimate, or the provider ``request`` body
        (and ``model``) for the server to estimate it as the proxy does."""
        reservation_id = options.setdefault("reservation_id", calls.new_reservation_id())
        tries = calls.Tries(self.max_retries)
        try:
            return self._send(calls.reserve(estimate_microdollars, **options), tries)
        except BaseException as error:
            if tries.may_have_landed or not calls.refused(error):  # it may be held: give it back
                self._release_if_made_later(reservation_id)
            raise

    def reserve_id(
        self, estimate_microdollars: int | None = None, **options: Unpack[calls.ReserveOptions]
    ) -> str:
        """``reserve``, answering only the reservation's id, as ``LocalNullSpend.reserve_id``
        does: what the integrations call, whichever client they are given."""
        return self.reserve(estimate_microdollars, **options).reservation_id

    def settle(self, reservation_id: str, **options: Unpack[calls.SettleOptions]) -> Settled:
        """Replace the estimate by the actual cost (``cost_microdollars``, or priced from
        ``usage``) and record the cost event."""
        return self._send(calls.settle(reservation_id, **options))

    def release(self, reservation_id: str) -> Settled:
        """Give the estimate back: the call did not happen."""
        return self._send(calls.release(reservation_id))

    def extend(self, reservation_id: str) -> Extended:
        """Give a reservation a full lifetime again from now: its call is still going. The
        tracked clients and the integrations do it while a stream's chunks arrive (see
        ``nullspend.client.renewal``)."""
        return self._send(calls.extend(reservation_id))

    def extend_later(self, reservation_id: str) -> None:
        """``extend`` from the background thread, as ``settle_later``."""
        self._later(calls.extend(reservation_id), f"extending {reservation_id}")

    def settle_later(self, reservation_id: str, **options: Unpack[calls.SettleOptions]) -> None:
        """``settle`` from a background thread, returning at once: how the integrations settle,
        so a call's answer never waits on NullSpend. Never raises: a failure is logged (the
        reservation then expires). Reads on this client (``cost_events``, ``budget_status``)
        wait for what is queued first."""
        self._later(calls.settle(reservation_id, **options), f"settling {reservation_id}")

    def release_later(self, reservation_id: str) -> None:
        """``release`` from the background thread, as ``settle_later``."""
        self._later(calls.release(reservation_id), f"releasing {reservation_id}")

    def _release_if_made_later(self, reservation_id: str) -> None:
        """``release_later`` for a reserve whose outcome is unknown: not found means it was
        never made, which is no failure."""
        self._later(calls.release(reservation_id), f"releasing {reservation_id}", NotFoundError)

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until what ``settle_later`` and ``release_later`` queued has been sent; False
        on timeout. Reads on this client do it first, so they see its own settles."""
        return self._background.pending == 0 or self._background.flush(timeout)

    def report(self, event: NewCostEvent, *, idempotency_key: str | None = None) -> RecordedEvent:
        """Record one call's cost. Retries are safe: the server records it once per key (one
        is made up when none is given)."""
        return self._send(calls.report(event, idempotency_key))

    def report_batch(
        self, events: list[NewCostEvent], *, idempotency_key: str | None = None
    ) -> RecordedBatch:
        """Record up to 100 events at once, all or none; retried as ``report`` is."""
        return self._send(calls.report_batch(events, idempotency_key))

    def cost_events(
        self,
        *,
        limit: int = 50,
        cursor: str | None = None,
        **filters: Unpack[calls.EventFilters],
    ) -> CostEventPage:
        """Recorded events, newest first, filtered; pass the page's ``cursor`` for the next."""
        self.flush()
        return self._send(calls.cost_events(limit, cursor, **filters))
