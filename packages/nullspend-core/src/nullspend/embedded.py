"""The enforcement engine in-process, for code with no NullSpend server (a notebook, a script):
budgets declared in code, spend kept in memory or in a local SQLite file. ``LocalNullSpend``
answers the calls the integrations make of a server client (reserve, settle, release, reads)
and the reports a script makes (report, report_batch), with the same typed denials and the same
validation and pricing, so a handler, a tracked provider client or a script works with either.

What it enforces: a total budget, per-customer and per-tag budgets, and a per-session limit,
each ``strict_block``, ``soft_block`` or ``warn``. Calendar periods and velocity limits need the
server. A reservation nobody settles or releases within its lifetime (an hour unless set) is
settled at its estimate, tagged ``_ns_estimated`` and ``_ns_expired``, as the server does: a call
whose end was never heard is charged and recorded, not forgotten. With a file, so are those still
held when the engine closes or the process exits (a script that ends with a stream half read):
no later engine could hear their end. (A process killed outright loses them.)

Embedded mode keeps one process's spend: a file in use by a live engine cannot be opened by
another process (the lock is held until ``close()``, the engine's collection or the process's
end); in one process the newest engine on a file takes it over and the older one refuses its
calls, as does an engine a forked child inherits. Budgets shared across processes need the
server.
"""

from __future__ import annotations

import atexit
import datetime as dt
import errno
import itertools
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Unpack

from nullspend import pricing
from nullspend.attribution import (
    MAX_ACTION_ID,
    MAX_EVENT_TYPE,
    MAX_MODEL,
    MAX_PROVIDER,
    MAX_SERVICE_TIER,
    MAX_SESSION,
    MAX_TRACE_ID,
    TAG_ESTIMATED,
    TAG_EXPIRED,
    customer_error,
    tag_entity_errors,
    tag_errors,
    tags_with_customer,
    text_error,
    unstorable,
)
from nullspend.client import processes
from nullspend.client.background import log_failure
from nullspend.client.calls import EventFilters, ReserveOptions, SettleOptions
from nullspend.client.models import (
    MAX_BATCH,
    BudgetStatus,
    CostEvent,
    CostEventPage,
    Extended,
    NewCostEvent,
    RecordedBatch,
    RecordedEvent,
    Reservation,
    Settled,
)
from nullspend.client.reporter import close_reporters_of
from nullspend.errors import (
    ApiError,
    ConflictError,
    NotFoundError,
    UnpricedModelError,
    ValidationError,
    api_error,
)
from nullspend.limits import (
    BIGINT_MAX,
    MAX_CALL_MICRODOLLARS,
    MAX_DURATION_MS,
    MAX_EVENTS_PAGE,
    PRICED_ABOVE_A_CALL,
)
from nullspend.policy import denials
from nullspend.policy.budgets import POLICIES, Policy, admits, remaining
from nullspend.policy.denials import Denial
from nullspend.tracked.clients import AsyncTrackedClients, TrackedClients
from nullspend.usage import Usage
from nullspend.wire import FORMATS

if sys.platform != "win32":
    import fcntl

log = logging.getLogger("nullspend.embedded")
EntityType = Literal["user", "customer", "tag"]
# Which denial a call hears first when several budgets refuse it, as on the server.
_ORDER = {"user": 0, "customer": 1, "tag": 2}
RESERVATION_TTL = dt.timedelta(hours=1)
EVENTS_KEPT = 10_000
"""How many of the latest cost events ``cost_events`` can read back (in memory and from a file)."""
_NO_USAGE = Usage()
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)
_ONE_PROCESS = (
    "embedded mode keeps one process's spend (another copy would enforce the caps again); "
    "a NullSpend server shares budgets across processes"
)


@dataclass(frozen=True)
class LocalBudget:
    """A budget declared in code: ``LocalBudget.total(5_000_000)`` (every call),
    ``.customer("acme", ...)`` or ``.tag("team", "ml", ...)``."""

    limit_microdollars: int
    entity_type: EntityType = "user"
    entity_id: str = "local"
    policy: Policy = "strict_block"
    session_limit_microdollars: int | None = None
    """Every session (``session_id``) may spend at most this much, when set."""

    def __post_init__(self) -> None:
        # Checked as the server checks a budget: a policy misspelt would otherwise enforce
        # nothing (any other string admitted every call), a limit of 0 would mean none.
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        if self.entity_type not in _ORDER:
            raise ValueError(f"entity_type must be one of {', '.join(_ORDER)}")
        # An entity no call can name (a customer id with a space) would be a cap never applied.
        if self.entity_type == "customer" and (error := customer_error(self.entity_id)):
            raise ValueError(error)
        if self.entity_type == "tag" and (errors := tag_entity_errors(self.entity_id)):
            raise ValueError("; ".join(errors))
        if error := _whole_error("limit_microdollars", self.limit_microdollars, BIGINT_MAX):
            raise ValueError(error)
        if (session_limit := self.session_limit_microdollars) is not None:
            if error := _whole_error("session_limit_microdollars", session_limit, BIGINT_MAX):
                raise ValueError(error)
            if session_limit == 0:
                raise ValueError("session_limit_microdollars must be positive (None: no limit)")

    @classmethod
    def total(cls, limit_microdollars: int, **settings: Any) -> LocalBudget:
        return cls(limit_microdollars, "user", "local", **settings)

    @classmethod
    def customer(cls, customer: str, limit_microdollars: int, **settings: Any) -> LocalBudget:
        return cls(limit_microdollars, "customer", customer, **settings)

    @classmethod
    def tag(cls, key: str, value: str, limit_microdollars: int, **settings: Any) -> LocalBudget:
        return cls(limit_microdollars, "tag", f"{key}={value}", **settings)


@dataclass(slots=True)
class _Account:
    budget: LocalBudget
    spend: int = 0
    reserved: int = 0


@dataclass(slots=True)
class _Session:
    """One session's spend and what it holds reserved, apart as the server keeps them: its
    limit counts both, a denial reports the spend."""

    spend: int = 0
    reserved: int = 0


@dataclass(slots=True)
class _Held:
    """A reservation: its estimate, the budgets it counts against and whom it is for."""

    estimate: int
    accounts: list[_Account]
    tags: dict[str, str]
    model: str | None
    provider: str | None
    customer: str | None
    session_id: str | None
    trace_id: str | None
    expires: float
    """``time.monotonic()`` after which it is settled at its estimate."""

    def request(self) -> tuple[object, ...]:
        """What a reserve sent again under its id must repeat to be answered it, as the
        server's: another request under the id was never checked against its budgets."""
        return (
            self.estimate,
            self.tags,
            self.model,
            self.provider,
            self.customer,
            self.session_id,
            self.trace_id,
        )


@dataclass(slots=True)
class _Event:
    """A cost event as the engine keeps it. Its ``CostEvent`` is made only when read: building
    one (or a dict of its 23 fields) for every call cost more than the rest of the engine's work.
    """

    source: ClassVar[str] = "embedded"
    id: str
    created_at: int
    """Microseconds since the epoch: a clock read costs less than a datetime, and converts
    both ways exactly."""
    reservation_id: str | None
    provider: str
    model: str
    usage: Usage
    cost_microdollars: int
    duration_ms: int | None
    customer: str | None
    session_id: str | None
    trace_id: str | None
    event_type: str | None
    tags: dict[str, str]
    action_id: str | None = None

    def read(self) -> CostEvent:
        fields: dict[str, Any] = {
            "id": self.id,
            "created_at": _time(self.created_at),
            "source": self.source,
            "provider": self.provider,
            "model": self.model,
            **self.usage.event_columns(),
            "cost_microdollars": self.cost_microdollars,
            "duration_ms": self.duration_ms,
            "session_id": self.session_id,
            "trace_id": self.trace_id,
            "customer": self.customer,
            "event_type": self.event_type,
            "reservation_id": self.reservation_id,
            "tags": self.tags,
            "upstream_status": None,
            "action_id": self.action_id,
        }
        return CostEvent.model_construct(**fields)

    @classmethod
    def of(cls, event: CostEvent) -> _Event:
        return cls(
            event.id,
            (event.created_at - _EPOCH) // _MICROSECOND,
            event.reservation_id,
            event.provider,
            event.model,
            Usage.of_event(event),
            event.cost_microdollars,
            event.duration_ms,
            event.customer,
            event.session_id,
            event.trace_id,
            event.event_type,
            event.tags,
            event.action_id,
        )

    def recorded(self) -> RecordedEvent:
        return RecordedEvent(
            id=self.id,
            created_at=_time(self.created_at),
            cost_microdollars=self.cost_microdollars,
        )


_K = TypeVar("_K")
_V = TypeVar("_V")
_ReportKey = tuple[bool, str]
"""A report's Idempotency-Key: a batch's and a single event's are apart, as on the server."""
_Reported = tuple[str, list["_Event"]]
"""What a key recorded: its events' fingerprint, and the events."""


@dataclass
class _Store:
    """Spend and events in a SQLite file, so they outlive the process."""

    path: Path
    _connection: sqlite3.Connection = field(init=False)

    def __post_init__(self) -> None:
        self._connection = sqlite3.connect(self.path, check_same_thread=False)
        try:
            self._refuse_another_programs_file()
            self._prepare()
        except BaseException as error:
            self._connection.close()
            if getattr(error, "sqlite_errorname", None) == "SQLITE_READONLY":
                raise PermissionError(
                    errno.EACCES, f"the spend file cannot be written ({error})", str(self.path)
                ) from None
            raise

    def _refuse_another_programs_file(self) -> None:
        """Raise ValueError, changing nothing, if the file is not SQLite or holds tables of
        another program's (a path mistyped, the server's database): it was switched to WAL and
        given the engine's tables, or failed with \"no such column: body\"."""
        try:
            tables = {
                name
                for (name,) in self._connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'"
                )
            }
        except sqlite3.DatabaseError as error:  # "file is not a database"
            raise ValueError(f"{self.path} is not a LocalNullSpend spend file ({error})") from None
        columns = [row[1] for row in self._connection.execute("PRAGMA table_info(cost_events)")]
        if not tables <= {"cost_events", "reported_keys"} or columns not in ([], ["seq", "body"]):
            raise ValueError(
                f"{self.path} is not a LocalNullSpend spend file: it holds another program's "
                f"tables ({', '.join(sorted(tables))}); give the engine a file of its own"
            )

    def _prepare(self) -> None:
        # As the server's SQLite: a commit appends to the WAL without waiting on the disk (an
        # fsync per settle cost a call about a millisecond); a crash of the process loses
        # nothing, only one of the machine can lose the latest commits.
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.executescript(
            "CREATE TABLE IF NOT EXISTS cost_events (seq INTEGER PRIMARY KEY, body TEXT NOT NULL);"
            # What each report's Idempotency-Key recorded: a retry after a restart is answered
            # with it, not counted again.
            "CREATE TABLE IF NOT EXISTS reported_keys (seq INTEGER PRIMARY KEY, batch INTEGER"
            " NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, event_ids TEXT NOT NULL);"
        )
        # A file that can be read but not written (read-only, on a read-only mount) opened,
        # then every settle failed: calls admitted and served, never recorded, their estimates
        # held for good. A write that changes nothing refuses such a file now.
        with self._connection:
            self._connection.execute("DELETE FROM reported_keys WHERE 0")

    def read(self, count: Callable[[_Event], None]) -> dict[_ReportKey, _Reported]:
        """Give ``count`` every event on file, oldest first, one at a time (held all at once, a
        file of a million events took 650 MB to open); answer the latest report keys (as many
        as an engine keeps) with the events each recorded."""
        rows = self._connection.execute(
            "SELECT batch, key, fingerprint, event_ids FROM reported_keys ORDER BY seq DESC"
            " LIMIT ?",
            (EVENTS_KEPT,),
        ).fetchall()
        keys = [
            ((bool(batch), key), fingerprint, json.loads(ids))
            for batch, key, fingerprint, ids in rows
        ]
        wanted = {event_id for _, _, ids in keys for event_id in ids}
        recorded: dict[str, _Event] = {}
        for (body,) in self._connection.execute("SELECT body FROM cost_events ORDER BY seq"):
            event = _Event.of(CostEvent.model_validate_json(body))
            count(event)
            if event.id in wanted:
                recorded[event.id] = event
        return {
            key: (fingerprint, [recorded[i] for i in ids])
            for key, fingerprint, ids in reversed(keys)
        }

    def add(self, *events: _Event, key: _ReportKey | None = None, fingerprint: str = "") -> None:
        """Write ``events`` (and the report key that recorded them) in one transaction: all or
        none."""
        bodies = [(event.read().model_dump_json(),) for event in events]
        with self._connection:
            if key is not None:
                self._connection.execute(
                    "INSERT INTO reported_keys (batch, key, fingerprint, event_ids)"
                    " VALUES (?, ?, ?, ?)",
                    (key[0], key[1], fingerprint, json.dumps([event.id for event in events])),
                )
            self._connection.executemany("INSERT INTO cost_events (body) VALUES (?)", bodies)


class _Tenancy:
    """What ties an engine (and the twins ``scoped`` copies of it, which share it) to the one
    process whose spend it keeps: the lock on its file, and why it refuses calls, if it does."""

    def __init__(self, path: Path | None) -> None:
        self.refusal: str | None = None
        """Set when the engine may no longer count spend: closed, superseded, or inherited by
        a fork."""
        self._path = path
        self._pid = os.getpid()
        self.engines: weakref.WeakSet[LocalNullSpend] = weakref.WeakSet()
        """The engine on the file and its scoped twins, which share its state: held weakly
        (no cycle keeps a dropped engine, and its lock on the file, alive)."""
        fd = None
        if path is not None:
            # In this process the newest engine on a file takes it over (a notebook cell run
            # again while its name still holds the old engine); another process is refused.
            held = _holders.get(path.resolve())
            fd = held.superseded() if held is not None else None
            if fd is None:
                fd = _lock_file(path)
            _holders[path.resolve()] = self
        # Closing the descriptor releases the lock: on close(), when the engine is collected,
        # and at exit (the kernel, even for a killed process).
        self._release = weakref.finalize(self, os.close, fd) if fd is not None else None
        _tenancies.add(self)

    def superseded(self) -> int | None:
        """Hand this engine's lock to a newer engine on the same file in this process (its
        descriptor, or None if it holds none any more); this one refuses calls from now on."""
        self._let_go(f"a newer LocalNullSpend in this process has {self._path} now")
        if self._release is None or (taken := self._release.detach()) is None:
            return None
        fd: int = taken[2][0]
        return fd

    def close(self) -> None:
        if self._path is None:  # with no file, nothing is shared and nothing closes
            return
        self._let_go(f"this LocalNullSpend is closed: {self._path} may be another's now")
        self.release()

    def _let_go(self, refusal: str) -> None:
        """Send what the reporters on the engine hold (refused afterwards, their events would
        be lost), refuse calls from now on, then charge what the engine still holds its
        estimate: no engine will hear those calls end (a newer one reads them from the file)."""
        if self.refusal is not None:
            return
        for twin in list(self.engines):
            close_reporters_of(twin)
        self.refusal = refusal
        # Twins share what they hold: any one of them charges it.
        if (engine := next(iter(list(self.engines)), None)) is not None:
            engine._charge_held()

    def check(self) -> None:
        """Raise the refusal, if any: first thing in every call that counts or reads spend."""
        if self.refusal is not None:
            raise ConflictError(self.refusal)

    def release(self) -> None:
        if self._release is not None:
            self._release()

    def forked(self) -> None:
        """In a forked child. Its copy of the spend would be a second cap beside the parent's,
        and its SQLite connection is not safe to use across a fork: refuse every call rather
        than count silently. Its copy of the lock's descriptor is closed; the parent's holds."""
        self.refusal = (
            f"this LocalNullSpend belongs to process {self._pid}, not to this forked child: "
            f"{_ONE_PROCESS}; make an engine in the child"
        )
        self.release()
        # A parent's thread may have held the engine's lock at the fork: the child's copy would
        # stay taken, and the child hang in its first call instead of hearing the refusal.
        lock = threading.Lock()
        for engine in self.engines:
            engine._lock = lock


_tenancies: weakref.WeakSet[_Tenancy] = weakref.WeakSet()
# This process's engine on each file, by its resolved path.
_holders: weakref.WeakValueDictionary[Path, _Tenancy] = weakref.WeakValueDictionary()


def _after_fork() -> None:
    for tenancy in list(_tenancies):
        tenancy.forked()


def _close_at_exit() -> None:
    for tenancy in list(_tenancies):
        tenancy.close()


atexit.register(_close_at_exit)
processes.at_child_exit(_close_at_exit)  # a multiprocessing child ends with os._exit


processes.after_fork_in_child(_after_fork)


def _lock_file(path: Path) -> int | None:
    """An exclusive advisory lock on ``<path>.lock``, its descriptor to hold while the engine
    lives; ``path`` resolved, so that two names of one file through a symbolic link take the
    same lock. Not on the database itself: SQLite holds POSIX locks on it, which closing
    another descriptor of the same file in this process would drop."""
    if sys.platform == "win32":
        log.warning("no file locks on Windows: open %s from one process at a time", path)
        return None
    path = path.resolve()
    fd = os.open(path.with_name(f"{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if isinstance(error, BlockingIOError):
            raise ConflictError(
                f"{path.absolute()} is in use by another LocalNullSpend, in this process or "
                f"another (share that one, or close it first): {_ONE_PROCESS}"
            ) from None
        raise
    return fd


class LocalNullSpend(TrackedClients):
    """``NullSpend``'s enforcement calls, answered in-process.

    >>> ns = LocalNullSpend([LocalBudget.total(5_000_000)])  # a $5 hard cap
    """

    def __init__(
        self,
        budgets: Iterable[LocalBudget] = (),
        *,
        path: str | Path | None = None,
        reservation_ttl: dt.timedelta = RESERVATION_TTL,
    ) -> None:
        self._ttl = reservation_ttl
        self._ttl_seconds = reservation_ttl.total_seconds()
        # In the order a call hears their denials, so a reservation checks them as they come.
        self._accounts = sorted(
            (_Account(b) for b in budgets), key=lambda a: _ORDER[a.budget.entity_type]
        )
        # What a call with no customer and no tags falls under (most calls, in a notebook).
        self._totals = [a for a in self._accounts if a.budget.entity_type == "user"]
        self._session_limited = any(a.budget.session_limit_microdollars for a in self._accounts)
        self._held: dict[str, _Held] = {}
        self._sweep_at = 0.0
        # Every session's spend, kept only when a budget limits sessions: with none, a process
        # that runs for months would grow with every session id it saw.
        self._sessions: dict[str, _Session] = {}
        # The latest events. Bounded, so a process that runs for months does not grow with its
        # calls; spend counts every event.
        self._events: deque[_Event] = deque(maxlen=EVENTS_KEPT)
        # What each recent report's Idempotency-Key recorded, with its events' fingerprint.
        self._reported: dict[_ReportKey, _Reported] = {}
        # The latest released reservations' ids: one sent again is refused, as on the server.
        self._released: dict[str, None] = {}
        self._ids = _Ids()
        self._lock = threading.Lock()
        self._tenancy = _Tenancy(Path(path) if path is not None else None)
        self._store = None
        if path is not None:
            try:
                self._store = _Store(Path(path))
                # Spend so far, from the events on file.
                self._reported = self._store.read(
                    lambda event: self._count(event, self._matching(event.customer, event.tags))
                )
            except BaseException:  # free the file at once, for a retry in this process
                self._tenancy.release()
                raise
        self._tenancy.engines.add(self)

    def close(self) -> None:
        """Free the file given as ``path`` for the next engine (this one then refuses calls),
        once a ``CostReporter`` on it has sent what it holds and what it still holds is charged
        its estimate (its calls' end could no longer be heard); at exit it is done for you.
        With no file, there is nothing to close; nor on a scoped copy (``customer``,
        ``scoped``), whose file is its original's."""
        if not self._scoped_copy:
            self._tenancy.close()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """True: nothing is ever queued (``settle_later`` and ``release_later`` settle at
        once). There so code written for ``NullSpend`` runs unchanged."""
        return True

    def __enter__(self) -> LocalNullSpend:
        return self

    def __copy__(self) -> LocalNullSpend:
        """A twin (``scoped``, ``customer``) sharing this engine's state and file."""
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        self._tenancy.engines.add(twin)
        return twin

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- enforcement --------------------------------------------------------------------------

    def reserve(
        self, estimate_microdollars: int | None = None, **options: Unpack[ReserveOptions]
    ) -> Reservation:
        unpriced = False
        if estimate_microdollars is None:  # estimated here once, not again by reserve_id
            estimate = _estimate_of(options)
            estimate_microdollars, unpriced = estimate.microdollars, estimate.unpriced
        reservation_id = self.reserve_id(estimate_microdollars, **options)
        return Reservation(
            reservation_id=reservation_id,
            estimate_microdollars=estimate_microdollars,
            expires_at=dt.datetime.now(dt.UTC) + self._ttl,
            unpriced=unpriced,
        )

    def reserve_id(
        self, estimate_microdollars: int | None = None, **options: Unpack[ReserveOptions]
    ) -> str:
        """``reserve``, answering only the reservation's id: what the integrations call for
        every call, without the typed answer they do not read."""
        if estimate_microdollars is None:
            estimate_microdollars = _estimate_of(options).microdollars
        elif error := _whole_error(
            "estimate_microdollars", estimate_microdollars, MAX_CALL_MICRODOLLARS
        ):
            raise ValidationError(error)
        if error := _text_error(options, _RESERVE_TEXTS):  # kept, then written at settle
            raise ValidationError(error)
        tags = dict(given) if (given := options.get("tags")) else {}
        if tags and (errors := tag_errors(tags)):
            raise ValidationError("; ".join(errors))
        customer, session_id = options.get("customer"), options.get("session_id")
        if customer is not None and (error := customer_error(customer)):
            raise ValidationError(error)
        chosen_id = options.get("reservation_id")
        if chosen_id is not None and (not isinstance(chosen_id, str) or unstorable(chosen_id)):
            raise ValidationError("reservation_id must be a string, with no NUL or lone surrogate")
        tags = tags_with_customer(tags, customer)
        accounts = self._matching(customer, tags) if tags else self._totals
        made = _Held(
            estimate_microdollars,
            accounts,
            tags,
            options.get("model"),
            options.get("provider"),
            customer,
            session_id,
            options.get("trace_id"),
            0.0,
        )
        with self._lock:
            self._tenancy.check()  # under the lock: the engine may let go while this waits
            if chosen_id is not None:
                held = self._held.get(chosen_id)
                if held is not None and held.request() == made.request():
                    return chosen_id  # sent again: what it made
                if held is not None or self._finished(chosen_id) is not None:
                    raise ConflictError(  # the server's answer
                        "this reservationId names another reservation (one made for a different"
                        " request), or one already finished",
                        details={"reservationId": chosen_id},
                    )
            self._expire_due()
            if denial := self._first_denial(accounts, session_id, estimate_microdollars):
                raise _error(denial)
            for account in accounts:
                account.reserved += estimate_microdollars
            if session_id and self._session_limited:
                self._session(session_id).reserved += estimate_microdollars
            reservation_id = chosen_id or self._ids.next("rsv")
            made.expires = time.monotonic() + self._ttl_seconds
            self._held[reservation_id] = made
        return reservation_id

    def settle(self, reservation_id: str, **options: Unpack[SettleOptions]) -> Settled:
        event = self._record(reservation_id, options)
        return Settled(
            reservation_id=reservation_id,
            status="settled",
            cost_event_id=event.id,
            cost_microdollars=event.cost_microdollars,
        )

    def _record(self, reservation_id: str, options: SettleOptions) -> _Event:
        """Settle: the reservation's event recorded and its spend counted."""
        cost = options.get("cost_microdollars")
        usage = options.get("usage")
        if cost is None and usage is None:
            raise ValidationError("give cost_microdollars, or usage (priced with the catalog)")
        if error := _settle_error(options):
            raise ValidationError(error)
        with self._lock:
            self._tenancy.check()  # under the lock, as in reserve_id: it writes to the file
            if (held := self._held.get(reservation_id)) is None:
                raise self._not_held(reservation_id)
            if cost is None:
                assert usage is not None
                model = options.get("model") or held.model
                cost = _catalog_cost(usage, model, options.get("service_tier"))
            return self._settle_held(reservation_id, held, cost, options, held.tags)

    def _settle_held(
        self,
        reservation_id: str,
        held: _Held,
        cost: int,
        options: SettleOptions,
        tags: dict[str, str],
    ) -> _Event:
        """Under the lock: the reservation's cost event written, its estimate given back and
        its cost counted."""
        event = _Event(
            self._ids.next("ce"),
            time.time_ns() // 1000,
            reservation_id,
            pricing.recorded_provider(
                options.get("provider") or held.provider, options.get("model") or held.model
            ),
            options.get("model") or held.model or "unknown",
            options.get("usage") or _NO_USAGE,
            cost,
            options.get("duration_ms"),
            held.customer,
            held.session_id,
            options.get("trace_id") or held.trace_id,
            options.get("event_type"),
            tags,
        )
        if self._store is not None:
            # First: if the file refuses it, the reservation stands and nothing changed.
            self._store.add(event)
        del self._held[reservation_id]
        self._unreserve(held)
        self._count(event, held.accounts)
        return event

    def _expire_due(self) -> None:
        """Under the lock: settle at their estimate the reservations whose lifetime is over.
        They all live as long, so they fall due in the order they were taken: the oldest first,
        and none before the oldest (``_sweep_at``), so most calls only read the clock."""
        now = time.monotonic()
        if now < self._sweep_at:
            return
        while self._held:
            reservation_id, held = next(iter(self._held.items()))
            if held.expires > now:
                self._sweep_at = held.expires
                return
            if not self._charge_estimate(reservation_id, held):
                return  # the file is busy: it stands, still due, and the next call retries
        self._sweep_at = now + self._ttl_seconds  # nothing is held: none is due before

    def _charge_held(self) -> None:
        """Every reservation still held charged its estimate, as when it expires."""
        # Bounded: at exit a thread that holds the lock may never give it back.
        if not self._lock.acquire(timeout=10):
            log.warning("reservations still held were not charged: the engine is busy")
            return
        try:
            for reservation_id, held in list(self._held.items()):
                if not self._charge_estimate(reservation_id, held):
                    return
        finally:
            self._lock.release()

    def _charge_estimate(self, reservation_id: str, held: _Held) -> bool:
        """Under the lock: a reservation nobody settled, settled at its estimate; False when
        the file refused it (it stands)."""
        expired = {**held.tags, TAG_ESTIMATED: "true", TAG_EXPIRED: "true"}
        try:
            self._settle_held(reservation_id, held, held.estimate, {}, expired)
        except sqlite3.Error as error:
            log.warning("charging reservation %s its estimate failed (%s)", reservation_id, error)
            return False
        return True

    def extend(self, reservation_id: str) -> Extended:
        """Give a held reservation a full lifetime again from now: its call is still going (a
        stream longer than ``reservation_ttl``). The integrations do it while chunks arrive."""
        self._tenancy.check()
        with self._lock:
            held = self._take(reservation_id)
            held.expires = time.monotonic() + self._ttl_seconds
            self._held[reservation_id] = held  # put last: the sweep takes them in due order
        return Extended(
            reservation_id=reservation_id, expires_at=dt.datetime.now(dt.UTC) + self._ttl
        )

    def extend_later(self, reservation_id: str) -> None:
        try:
            self.extend(reservation_id)
        except Exception as error:
            log_failure(f"extending {reservation_id}", error)

    def release(self, reservation_id: str) -> Settled:
        self._give_back(reservation_id)
        return Settled(reservation_id=reservation_id, status="released")

    def _give_back(self, reservation_id: str) -> None:
        self._tenancy.check()
        with self._lock:
            self._unreserve(self._take(reservation_id))
            _keep(self._released, reservation_id, None)

    def settle_later(self, reservation_id: str, **options: Unpack[SettleOptions]) -> None:
        """``settle``, at once (in-process it costs microseconds; ``NullSpend`` queues it), a
        failure logged rather than raised, as ``NullSpend.settle_later``."""
        try:  # what settle does, without building the answer nobody reads
            self._record(reservation_id, options)
        except Exception as error:
            log_failure(f"settling {reservation_id}", error)

    def release_later(self, reservation_id: str) -> None:
        try:
            self._give_back(reservation_id)
        except Exception as error:
            log_failure(f"releasing {reservation_id}", error)

    # --- events reported after the fact ---------------------------------------------------

    def report(self, event: NewCostEvent, *, idempotency_key: str | None = None) -> RecordedEvent:
        """Record a call made without a reservation, its cost counted against the budgets it
        falls under (never refused: it already happened). Priced with the catalog when
        ``cost_microdollars`` is not given, as the server does; a key given again answers what
        was recorded under it."""
        return self._report([event], idempotency_key, batch=False)[0].recorded()

    def report_batch(
        self, events: list[NewCostEvent], *, idempotency_key: str | None = None
    ) -> RecordedBatch:
        """Record up to 100 events at once, all or none."""
        if idempotency_key is not None and "#" in idempotency_key:
            raise ValidationError("a batch's idempotency key cannot contain '#'")  # as the server
        recorded = self._report(events, idempotency_key, batch=True)
        return RecordedBatch(inserted=len(recorded), ids=[e.id for e in recorded])

    def _report(
        self, reports: list[NewCostEvent], idempotency_key: str | None, *, batch: bool
    ) -> list[_Event]:
        if not 1 <= len(reports) <= MAX_BATCH:
            raise ValidationError(f"report 1 to {MAX_BATCH} events at once")
        events = [self._reported_event(report) for report in reports]
        key: _ReportKey | None = None
        fingerprint = ""
        if idempotency_key is not None:
            key = (batch, idempotency_key)
            fingerprint = json.dumps([r.wire() for r in reports], sort_keys=True)
        with self._lock:
            # Under the lock: checked before it, a report priced while the file was let go was
            # written after the next engine had summed the file, a cost its cap never saw.
            self._tenancy.check()
            if key is not None and key in self._reported:
                earlier, recorded = self._reported[key]
                if earlier != fingerprint:
                    raise ConflictError("this idempotency key was used with other events")
                return recorded
            if self._store is not None:
                self._store.add(*events, key=key, fingerprint=fingerprint)
            for event in events:
                self._count(event, self._matching(event.customer, event.tags))
            if key is not None:
                _keep(self._reported, key, (fingerprint, events))
        return events

    def _reported_event(self, report: NewCostEvent) -> _Event:
        """A reported call as the engine keeps it, refused as the server refuses it."""
        given = report.__dict__
        if errors := tag_errors(report.tags):
            raise ValidationError("; ".join(errors))
        if error := _text_error(given, _REPORT_TEXTS) or _bounds_error(given, _CALL_BOUNDS):
            raise ValidationError(error)
        if report.customer is not None and (error := customer_error(report.customer)):
            raise ValidationError(error)
        tags = tags_with_customer(report.tags, report.customer)
        try:
            usage = Usage.of_event(report)
        except ValueError as error:  # a negative count, or more reasoning than output
            raise ValidationError(str(error)) from None
        cost = report.cost_microdollars
        if cost is None:
            cost = _catalog_cost(usage, report.model, report.service_tier)
        return _Event(
            self._ids.next("ce"),
            time.time_ns() // 1000,
            None,
            report.provider,
            report.model,
            usage,
            cost,
            report.duration_ms,
            report.customer,
            report.session_id,
            report.trace_id,
            report.event_type,
            tags,
            report.action_id,
        )

    # --- reads --------------------------------------------------------------------------------

    def budget_status(self) -> list[BudgetStatus]:
        self._tenancy.check()
        with self._lock:
            self._expire_due()
            return [
                BudgetStatus(
                    entity_type=a.budget.entity_type,
                    entity_id=a.budget.entity_id,
                    limit_microdollars=a.budget.limit_microdollars,
                    spend_microdollars=a.spend,
                    reserved_microdollars=a.reserved,
                    remaining_microdollars=remaining(
                        a.budget.limit_microdollars, a.spend, a.reserved
                    ),
                    policy=a.budget.policy,
                    reset_interval="none",
                )
                for a in self._accounts
            ]

    def cost_events(
        self, *, limit: int = 50, cursor: str | None = None, **filters: Unpack[EventFilters]
    ) -> CostEventPage:
        """Newest first; ``cursor`` is the id of the last event of the previous page: a
        position, as on the server, whatever the filters (an id no longer kept, none older)."""
        if type(limit) is not int or not 1 <= limit <= MAX_EVENTS_PAGE:  # as the server answers
            raise ValidationError(f"limit must be a whole number from 1 to {MAX_EVENTS_PAGE}")
        self._tenancy.check()
        with self._lock:
            self._expire_due()
            newest_first: Iterable[_Event] = reversed(self._events)
            if cursor is not None:
                older = itertools.dropwhile(lambda e: e.id != cursor, newest_first)
                newest_first = itertools.islice(older, 1, None)  # the cursor's own event was read
            # Only the page (and one more, to tell whether another follows) is read: every event
            # kept read into a CostEvent made a page of one take 230 ms, with 10,000 kept.
            found = list(
                itertools.islice((e for e in newest_first if _matches(e, filters)), limit + 1)
            )
        page = [e.read() for e in found[:limit]]
        return CostEventPage(data=page, cursor=page[-1].id if len(found) > limit else None)

    # --- inside -------------------------------------------------------------------------------

    def _matching(self, customer: str | None, tags: Mapping[str, str]) -> list[_Account]:
        entities = {f"{k}={v}" for k, v in tags.items()} if tags else ()
        return [
            a
            for a in self._accounts
            if a.budget.entity_type == "user"
            or (a.budget.entity_type == "customer" and a.budget.entity_id == customer)
            or (a.budget.entity_type == "tag" and a.budget.entity_id in entities)
        ]

    def _first_denial(
        self, accounts: list[_Account], session_id: str | None, estimate: int
    ) -> Denial | None:
        if session_id and self._session_limited:
            limits = [a.budget.session_limit_microdollars for a in accounts]
            if session_limits := [limit for limit in limits if limit]:
                session = self._sessions.get(session_id) or _Session()
                if session.spend + session.reserved + estimate > min(session_limits):
                    return denials.session_limit_exceeded(
                        session_id, session.spend, min(session_limits)
                    )
        for account in accounts:
            budget = account.budget
            if admits(
                budget.policy, budget.limit_microdollars, account.spend, account.reserved, estimate
            ):
                continue
            if budget.entity_type == "customer":
                return denials.customer_budget_exceeded(
                    budget.entity_id, budget.limit_microdollars, account.spend, None
                )
            if budget.entity_type == "tag":
                key, _, value = budget.entity_id.partition("=")
                return denials.tag_budget_exceeded(
                    key, value, budget.limit_microdollars, account.spend
                )
            return denials.budget_exceeded(
                "user", budget.entity_id, budget.limit_microdollars, account.spend, estimate, None
            )
        return None

    def _take(self, reservation_id: str) -> _Held:
        if (held := self._held.pop(reservation_id, None)) is None:
            raise self._not_held(reservation_id)
        return held

    def _not_held(self, reservation_id: str) -> ApiError:
        """Why a reservation is not held: it was settled (or released, or expired), or never
        was."""
        if (status := self._finished(reservation_id)) is None:
            return NotFoundError(f"no reservation {reservation_id!r}")
        return ConflictError(  # with the server's details: what log_failure reads
            f"reservation {reservation_id} is already {status}",
            details={"reservationId": reservation_id, "status": status},
        )

    def _finished(self, reservation_id: str) -> str | None:
        """How a reservation no longer held finished (among the latest kept), if it did."""
        if reservation_id in self._released:
            return "released"
        for event in self._events:
            if event.reservation_id == reservation_id:
                return "expired" if TAG_EXPIRED in event.tags else "settled"
        return None

    def _unreserve(self, held: _Held) -> None:
        for account in held.accounts:
            account.reserved -= held.estimate
        if self._session_limited and (session_id := held.session_id):
            self._sessions[session_id].reserved -= held.estimate

    def _count(self, event: _Event, accounts: list[_Account]) -> None:
        """Add a recorded event's cost to the spend of ``accounts``, the budgets it falls under."""
        self._events.append(event)
        cost = event.cost_microdollars
        for account in accounts:
            account.spend += cost
        if self._session_limited and (session_id := event.session_id):
            self._session(session_id).spend += cost

    def _session(self, session_id: str) -> _Session:
        if (session := self._sessions.get(session_id)) is None:
            session = self._sessions[session_id] = _Session()
        return session


class AsyncLocalNullSpend(AsyncTrackedClients):
    """``LocalNullSpend`` for asyncio code (its calls never wait on I/O but a local file)."""

    def __init__(
        self,
        budgets: Iterable[LocalBudget] = (),
        *,
        path: str | Path | None = None,
        reservation_ttl: dt.timedelta = RESERVATION_TTL,
    ) -> None:
        self.engine = LocalNullSpend(budgets, path=path, reservation_ttl=reservation_ttl)

    @property
    def sync_client(self) -> LocalNullSpend:
        """The engine, for code on a thread of its own, as ``AsyncNullSpend.sync_client``."""
        return self.engine

    async def __aenter__(self) -> AsyncLocalNullSpend:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        if not self._scoped_copy:  # a scoped copy shares its original's engine
            self.engine.close()

    async def flush(self, timeout: float | None = 30.0) -> bool:
        return self.engine.flush(timeout)

    async def reserve(
        self, estimate_microdollars: int | None = None, **options: Unpack[ReserveOptions]
    ) -> Reservation:
        return self.engine.reserve(estimate_microdollars, **options)

    async def reserve_id(
        self, estimate_microdollars: int | None = None, **options: Unpack[ReserveOptions]
    ) -> str:
        return self.engine.reserve_id(estimate_microdollars, **options)

    async def settle(self, reservation_id: str, **options: Unpack[SettleOptions]) -> Settled:
        return self.engine.settle(reservation_id, **options)

    async def release(self, reservation_id: str) -> Settled:
        return self.engine.release(reservation_id)

    def settle_later(self, reservation_id: str, **options: Unpack[SettleOptions]) -> None:
        self.engine.settle_later(reservation_id, **options)

    def release_later(self, reservation_id: str) -> None:
        self.engine.release_later(reservation_id)

    async def extend(self, reservation_id: str) -> Extended:
        return self.engine.extend(reservation_id)

    def extend_later(self, reservation_id: str) -> None:
        self.engine.extend_later(reservation_id)

    async def report(
        self, event: NewCostEvent, *, idempotency_key: str | None = None
    ) -> RecordedEvent:
        return self.engine.report(event, idempotency_key=idempotency_key)

    async def report_batch(
        self, events: list[NewCostEvent], *, idempotency_key: str | None = None
    ) -> RecordedBatch:
        return self.engine.report_batch(events, idempotency_key=idempotency_key)

    async def budget_status(self) -> list[BudgetStatus]:
        return self.engine.budget_status()

    async def cost_events(
        self, *, limit: int = 50, cursor: str | None = None, **filters: Unpack[EventFilters]
    ) -> CostEventPage:
        return self.engine.cost_events(limit=limit, cursor=cursor, **filters)


def _error(denial: Denial) -> ApiError:
    return api_error(
        denial.code,
        denial.message,
        status=denial.code.http_status,
        details=denial.details,
        retry_after=denial.retry_after_seconds,
        upgrade_url=denial.upgrade_url,
    )


def _keep(kept: dict[_K, _V], key: _K, value: _V) -> None:
    """Keep ``key`` among the latest ``EVENTS_KEPT``: bounded, so a process that runs for
    months does not grow with its calls; the oldest goes."""
    if len(kept) >= EVENTS_KEPT:
        del kept[next(iter(kept))]
    kept[key] = value


def _matches(event: _Event, filters: EventFilters) -> bool:
    plain = {k: v for k, v in filters.items() if k != "tags"}
    if any(getattr(event, k) != v for k, v in plain.items()):
        return False
    wanted: Mapping[str, str] = filters.get("tags") or {}
    return all(event.tags.get(k) == v for k, v in wanted.items())


def _estimate_of(options: ReserveOptions) -> pricing.Estimate:
    """A reservation's estimate from the provider request it was given, as the server makes it;
    the model the request names becomes the reservation's when none was given."""
    request = options.get("request")
    if request is None:
        raise ValidationError("give estimate_microdollars, or the provider request to estimate")
    wire = None
    if (name := options.get("wire_format")) is not None and (wire := FORMATS.get(name)) is None:
        raise ValidationError(f"unknown wire_format {name!r}; known: {', '.join(FORMATS)}")
    estimate = pricing.estimate_request_body(
        request, wire, provider=options.get("provider"), model=options.get("model")
    )
    if estimate.requested_model is None:
        raise ValidationError("the request names no model; give model")
    options.setdefault("model", estimate.requested_model)
    return estimate


def _catalog_cost(usage: Usage, model: str | None, service_tier: object) -> int:
    """What ``usage`` of ``model`` costs at the catalog's prices, as the server prices it."""
    if service_tier is not None and not isinstance(service_tier, str):
        raise ValidationError("service_tier must be a string, as the answer names the tier")
    try:
        cost = pricing.cost(usage, model or "", service_tier=service_tier).total_microdollars
    except UnpricedModelError:
        raise ValidationError(
            f"model {model!r} is not in the pricing catalog: give cost_microdollars"
        ) from None
    if cost > MAX_CALL_MICRODOLLARS:
        raise ValidationError(PRICED_ABOVE_A_CALL)
    return cost


_CALL_BOUNDS = (("cost_microdollars", MAX_CALL_MICRODOLLARS), ("duration_ms", MAX_DURATION_MS))

# The texts each call may carry, with the fewest and most characters the server takes of each
# (``nullspend.attribution``); a customer id has a pattern of its own.
_Texts = tuple[tuple[str, int, int], ...]
_RESERVE_TEXTS: _Texts = (
    ("model", 1, MAX_MODEL),
    ("provider", 0, MAX_PROVIDER),
    ("session_id", 1, MAX_SESSION),
    ("trace_id", 0, MAX_TRACE_ID),
)
_SETTLE_TEXTS: _Texts = (
    ("model", 1, MAX_MODEL),
    ("provider", 0, MAX_PROVIDER),
    ("service_tier", 0, MAX_SERVICE_TIER),
    ("event_type", 0, MAX_EVENT_TYPE),
    ("trace_id", 0, MAX_TRACE_ID),
)
_REPORT_TEXTS: _Texts = (
    ("provider", 1, MAX_PROVIDER),
    ("model", 1, MAX_MODEL),
    ("service_tier", 0, MAX_SERVICE_TIER),
    ("session_id", 1, MAX_SESSION),
    ("trace_id", 0, MAX_TRACE_ID),
    ("event_type", 0, MAX_EVENT_TYPE),
    ("action_id", 0, MAX_ACTION_ID),
)


def _settle_error(options: SettleOptions) -> str | None:
    """What the server refuses in a settle's options, checked by hand (every call settles):
    kept, such a value would count wrong, or be written where no engine could read it back."""
    if error := _bounds_error(options, _CALL_BOUNDS):
        return error
    usage = options.get("usage")
    if usage is not None and not isinstance(usage, Usage):
        return "usage must be a nullspend.usage.Usage"
    return _text_error(options, _SETTLE_TEXTS)


def _text_error(options: Mapping[str, object], texts: _Texts) -> str | None:
    """Why a text named in ``texts`` is refused, if one is: the server refuses it at once, and
    taken here it would be served and then never billed (the file refuses it at settle)."""
    for name, least, most in texts:
        if (value := options.get(name)) is not None and (
            error := text_error(name, value, most, least=least)
        ):
            return error
    return None


def _bounds_error(options: Mapping[str, object], bounds: tuple[tuple[str, int], ...]) -> str | None:
    """Why a count named in ``bounds`` is refused, if one is."""
    for name, most in bounds:
        if (value := options.get(name)) is not None and (error := _whole_error(name, value, most)):
            return error
    return None


def _whole_error(name: str, value: object, most: int) -> str | None:
    """Why ``value`` is no count the server and the file store, if it is not."""
    if type(value) is int and 0 <= value <= most:
        return None
    return f"{name} must be a whole number, not negative, at most {most}"


def _time(micros: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=micros)


class _Ids:
    """Ids unique across processes (a random prefix each) without a system call per id."""

    def __init__(self) -> None:
        self._prefix = uuid.uuid4().hex[:12]
        self._counter = itertools.count()

    def next(self, kind: str) -> str:
        return f"{kind}_{self._prefix}{next(self._counter):012x}"


__all__ = ["AsyncLocalNullSpend", "LocalBudget", "LocalNullSpend"]
