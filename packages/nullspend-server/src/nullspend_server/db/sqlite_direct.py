"""The engine's Core statements executed straight on SQLite's DB-API connection.

SQLAlchemy's execution layer (connection and transaction objects, events, execution contexts,
result objects) costs several times what SQLite takes to run the statement itself: on the
proxy's hot path it was half of the process's CPU per call (benchmarks/README.md). Here each
statement is compiled once by SQLAlchemy for SQLite, and values are converted by the same
bind and result processors SQLAlchemy would use (the column types of ``db.tables``), so a
row written or read here is the same as through SQLAlchemy. The tests run the engine on both
paths: this one on SQLite, SQLAlchemy's async connections on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

_Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    """One SQL text and where each of its ``?`` takes its value from: a parameter (an item of
    it, for an expanded ``IN`` list) or a constant the statement carries (``policy != ?``)."""

    sql: str
    slots: tuple[tuple[str | None, int | None, Any, _Processor | None], ...]
    """(parameter name or None, index in the list or None, constant, processor)."""


@dataclass(slots=True)
class _Prepared:
    compiled: SQLCompiler
    expanding: tuple[str, ...]
    """Parameters that are lists expanded into ``IN (?, ?, ...)``."""
    plans: dict[tuple[int, ...], _Plan]
    """By the lengths of the expanding parameters."""
    row_type: Callable[..., Any] | None
    """Builds a row (attribute access by column name) from the processed values."""
    result_processors: Sequence[tuple[int, _Processor]]
    """(column index, processor) for the columns whose values need converting."""

    def plan(self, parameters: Mapping[str, Any]) -> _Plan:
        lengths = tuple(len(parameters[name]) for name in self.expanding)
        plan = self.plans.get(lengths)
        if plan is None:
            plan = self.plans[lengths] = _plan(self.compiled, parameters)
        return plan


class DirectRows:
    """What the engine reads of a result: rows, ``first``/``one``, ``scalars``, ``rowcount``."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def first(self) -> Any:
        return self._rows[0] if self._rows else None

    def one(self) -> Any:
        if len(self._rows) != 1:
            raise LookupError(f"expected one row, got {len(self._rows)}")
        return self._rows[0]

    def scalars(self) -> list[Any]:
        return [row[0] for row in self._rows]


class DirectSQLite:
    """An open SQLite transaction that runs Core statements on the DB-API connection."""

    def __init__(self, connection: sqlite3.Connection, dialect: Dialect) -> None:
        self._connection = connection
        self.dialect = dialect

    async def execute(self, statement: Executable, parameters: Any = None, /) -> DirectRows:
        if isinstance(parameters, list):
            return self._execute_many(statement, parameters)
        return self._execute_one(statement, parameters or {})

    def _execute_one(self, statement: Executable, parameters: Mapping[str, Any]) -> DirectRows:
        prepared = _prepare(statement, self.dialect, tuple(parameters))
        plan = prepared.plan(parameters)
        values = []
        for name, index, constant, process in plan.slots:
            value = constant if name is None else parameters[name]
            if index is not None:
                value = value[index]
            values.append(process(value) if process is not None and value is not None else value)
        cursor = self._connection.execute(plan.sql, values)
        rows = []
        if prepared.row_type is not None:
            make, processors = prepared.row_type, prepared.result_processors
            for raw in cursor.fetchall():
                row = list(raw)
                for index, process in processors:
                    row[index] = process(row[index])
                rows.append(make(*row))
        return DirectRows(rows, cursor.rowcount)

    def _execute_many(
        self, statement: Executable, parameters: list[Mapping[str, Any]]
    ) -> DirectRows:
        # Inserts of a few rows (a settled call's event and its tags): one execution each
        # keeps RETURNING in parameter order; SQLite runs each in microseconds.
        rows: list[Any] = []
        count = 0
        for one in parameters:
            result = self._execute_one(statement, one)
            rows.extend(result)
            count += result.rowcount
        return DirectRows(rows, count)


# Keyed by the statement itself (hashed by identity), which the entry keeps alive.
_cache: dict[tuple[Executable, tuple[str, ...]], _Prepared] = {}


def _prepare(statement: Executable, dialect: Dialect, keys: tuple[str, ...]) -> _Prepared:
    """Compile ``statement`` for SQLite once per set of parameter names (an INSERT's columns
    are the parameters it is given, as with SQLAlchemy's own execution)."""
    cache_key = (statement, keys)
    prepared = _cache.get(cache_key)
    if prepared is not None:
        return prepared
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))  # type: ignore[attr-defined]
    assert isinstance(compiled, SQLCompiler)
    if isinstance(statement, Insert) and compiled.insert_prefetch:
        # Python-side column defaults run in SQLAlchemy's execution context, not here.
        raise ValueError(f"give every column of {statement.table} a value: {keys}")
    expanding = tuple(name for name, bind in compiled.binds.items() if bind.expanding)
    columns = list(statement.exported_columns)  # type: ignore[attr-defined]
    row_type = namedtuple("Row", [c.key for c in columns]) if columns else None
    result_processors = [
        (index, process)
        for index, column in enumerate(columns)
        if (process := column.type.dialect_impl(dialect).result_processor(dialect, None))
    ]
    prepared = _Prepared(compiled, expanding, {}, row_type, result_processors)
    # The engine's statements are module constants: one entry per statement and key set.
    _cache[cache_key] = prepared
    return prepared


def _plan(compiled: SQLCompiler, parameters: Mapping[str, Any]) -> _Plan:
    """Let SQLAlchemy expand the statement for these list lengths once; remember where each
    placeholder's value comes from, so later executions skip the expansion."""
    state = compiled.construct_expanded_state(parameters)
    origin = {
        expanded: (name, index)
        for name, names in (state.parameter_expansion or {}).items()
        for index, expanded in enumerate(names)
    }
    slots: list[tuple[str | None, int | None, Any, _Processor | None]] = []
    for placeholder in state.positiontup or ():
        name, index = origin.get(placeholder, (placeholder, None))
        bind = compiled.binds[name]
        process = state.processors.get(placeholder) or bind.type.dialect_impl(
            compiled.dialect
        ).bind_processor(compiled.dialect)
        if name in parameters:
            slots.append((name, index, None, process))
        else:  # a value the statement itself carries
            constant = bind.effective_value
            slots.append((None, None, process(constant) if process else constant, None))
    return _Plan(state.statement, tuple(slots))
