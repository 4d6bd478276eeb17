"""The enforcement engine: the one implementation of the enforcement order that the
reservations API and the proxy both call.

Order: period reset -> session limit -> velocity -> budgets -> reserve; later settle (actual
cost replaces the estimate and the cost event is written in the same transaction) or release.
"""

from nullspend_server.engine.reserve import (
    DeniedError,
    ReservationIdTakenError,
    ReservationRequest,
    Tightest,
)
from nullspend_server.engine.service import Engine
from nullspend_server.engine.settle import Settlement

__all__ = [
    "DeniedError",
    "Engine",
    "ReservationIdTakenError",
    "ReservationRequest",
    "Settlement",
    "Tightest",
]
