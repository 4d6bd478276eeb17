"""Fixtures for every suite: a fresh fake provider over real HTTP, and a real NullSpend server on
each database (the server's own suite sets its server up in ``nullspend_server/conftest.py``)."""

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fakes.upstream import run_fake_upstream
from tests.nullspend_server.conftest import (  # noqa: F401 (fixtures)
    RunningServer,
    database_url,
    pg_template,
    sqlite_template,
    start_server,
)


@pytest.fixture
def fake() -> Iterator[tuple[str, Any]]:
    """The fake provider's base URL and its app (``app.state.requests`` records each request)."""
    with run_fake_upstream() as running:
        yield running


@pytest.fixture
def server(database_url: str) -> Iterator[RunningServer]:  # noqa: F811 (the fixture)
    running = start_server(database_url)
    yield running
    running.stop()
