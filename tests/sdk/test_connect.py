"""``nullspend.connect``: the server's client when one is configured, else the in-process
engine, decided by configuration alone; a half-configured server is an error, never a silent
switch to budgets declared in code."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nullspend.client import AsyncNullSpend, NullSpend
from nullspend.connect import connect, connect_async
from nullspend.embedded import AsyncLocalNullSpend, LocalBudget, LocalNullSpend
from nullspend.errors import BudgetExceededError
from tests.fakes.upstream import run_fake_upstream
from tests.nullspend_server.conftest import RunningServer
from tests.sdk.test_embedded import cap_for
from tests.sdk.test_tracked_openai import COST, MESSAGES, client_kwargs


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NULLSPEND_API_KEY", raising=False)
    monkeypatch.delenv("NULLSPEND_BASE_URL", raising=False)


@pytest.mark.usefixtures("no_server")
def test_with_no_server_configured_the_cap_is_in_process() -> None:
    with run_fake_upstream() as fake:
        ns = connect(budgets=[LocalBudget.total(cap_for(1))])
        assert isinstance(ns, LocalNullSpend)
        client = ns.openai(**client_kwargs(fake))
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        with pytest.raises(BudgetExceededError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        assert len(fake[1].state.requests) == 1
        assert [e.cost_microdollars for e in ns.cost_events().data] == [COST]
    assert isinstance(connect_async(), AsyncLocalNullSpend)


def test_a_configured_server_is_used(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NULLSPEND_API_KEY", server.admin_key)
    monkeypatch.setenv("NULLSPEND_BASE_URL", server.base_url)
    with connect() as ns:
        assert isinstance(ns, NullSpend)
        assert ns.introspect().role == "admin"

    async def run() -> Any:
        async with connect_async() as ans:
            assert isinstance(ans, AsyncNullSpend)
            return (await ans.introspect()).role

    assert asyncio.run(run()) == "admin"


@pytest.mark.usefixtures("no_server")
def test_half_a_server_configuration_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NULLSPEND_API_KEY", "ns_live_sk_" + "0" * 32)
    with pytest.raises(ValueError, match="NULLSPEND_BASE_URL"):
        connect()
    with pytest.raises(ValueError, match="budgets"):
        connect(budgets=[LocalBudget.total(1)])
    monkeypatch.delenv("NULLSPEND_API_KEY")
    with pytest.raises(ValueError, match="budgets"):
        connect(base_url="http://127.0.0.1:1", budgets=[LocalBudget.total(1)])
