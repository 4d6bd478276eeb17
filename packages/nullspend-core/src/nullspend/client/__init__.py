"""Clients of a NullSpend server: ``NullSpend`` (sync) and ``AsyncNullSpend`` (asyncio)."""

from nullspend.client.aio import AsyncNullSpend
from nullspend.client.models import (
    Budget,
    BudgetStatus,
    CostEvent,
    CostEventPage,
    Extended,
    Introspection,
    NewCostEvent,
    RecordedBatch,
    RecordedEvent,
    Reservation,
    Settled,
)
from nullspend.client.reporter import CostReporter, ReporterStats
from nullspend.client.sync import NullSpend

__all__ = [
    "AsyncNullSpend",
    "Budget",
    "BudgetStatus",
    "CostEvent",
    "CostEventPage",
    "CostReporter",
    "Extended",
    "Introspection",
    "NewCostEvent",
    "NullSpend",
    "RecordedBatch",
    "RecordedEvent",
    "ReporterStats",
    "Reservation",
    "Settled",
]
