"""What an engine is asked to reserve: its ``reserve_id`` spied on."""

from __future__ import annotations

from typing import Any

from nullspend.embedded import LocalNullSpend


def reserved_estimates(engine: LocalNullSpend) -> list[int]:
    """The estimates ``engine`` is asked to reserve from now on, in order (the integrations
    reserve estimates they made, never a request for the engine to estimate)."""
    reserved: list[int] = []
    reserve_id = engine.reserve_id

    def spy(estimate: int | None = None, **options: Any) -> str:
        assert estimate is not None
        reserved.append(estimate)
        return reserve_id(estimate, **options)

    engine.reserve_id = spy  # type: ignore[method-assign]
    return reserved
