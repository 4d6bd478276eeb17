"""``ns.anthropic()``: a real ``anthropic.Anthropic`` (and ``AsyncAnthropic``, on the SDK's own
httpx2) tracked like ``ns.openai()``: messages and the stream helper priced exactly, a denial
typed and raised before anything is sent."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import anthropic
import pytest

from nullspend.client import AsyncNullSpend, NullSpend
from nullspend.embedded import AsyncLocalNullSpend, LocalBudget, LocalNullSpend
from nullspend.errors import DeniedError, TagBudgetExceededError, UnmeteredRouteError
from tests.nullspend_server.conftest import RunningServer
from tests.sdk.test_tracked_openai import (
    assert_the_sdks_http_defaults,
    released_budget,
    settled_events,
)

USAGE = {"input": 20, "cached": 6000, "output": 87, "reasoning": 0, "cache_write": 1500}
# claude-sonnet-4-5: $3 input, $0.30 cache read, $3.75 cache write (5 min), $15 output per M
COST = 20 * 3 + 6000 * 0.3 + 1500 * 3.75 + 87 * 15
MODEL = "claude-sonnet-4-5-20250929"
MESSAGES = [{"role": "user", "content": "Hello"}]


def client_kwargs(fake: tuple[str, Any]) -> dict[str, Any]:
    return {
        "base_url": fake[0],
        "api_key": "sk-ant-test",
        "max_retries": 0,
        "default_headers": {"x-fake-usage": json.dumps(USAGE)},
    }


def test_messages_and_the_stream_helper(server: RunningServer, fake: tuple[str, Any]) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        client = ns.scoped(tags={"team": "ml"}).anthropic(**client_kwargs(fake))
        message = client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES)
        assert message.usage.input_tokens == 20
        with client.messages.stream(model=MODEL, max_tokens=200, messages=MESSAGES) as stream:
            final = stream.get_final_message()
        assert final.usage.output_tokens == 87
        events = settled_events(ns, 2)
        assert [e.cost_microdollars for e in events] == [COST, COST]
        assert all(e.provider == "anthropic" and e.tags == {"team": "ml"} for e in events)
        assert fake[1].state.requests[-1]["headers"]["authorization"] == "Bearer sk-ant-test"

        with server.client() as admin:
            budget = {"entityType": "tag", "entityId": "team=ml", "limitMicrodollars": 1}
            admin.post("/api/budgets", json=budget).raise_for_status()
        sent = len(fake[1].state.requests)
        with pytest.raises(TagBudgetExceededError) as denied:
            client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES)
        assert isinstance(denied.value, anthropic.AnthropicError)
        assert denied.value.details["tag_key"] == "team"
        assert len(fake[1].state.requests) == sent


def test_async_anthropic(server: RunningServer, fake: tuple[str, Any]) -> None:
    async def run() -> None:
        async with AsyncNullSpend(server.admin_key, server.base_url) as ns:
            client = ns.customer("acme").anthropic(**client_kwargs(fake))
            message = await client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES)
            assert message.content
            async with client.messages.stream(
                model=MODEL, max_tokens=200, messages=MESSAGES
            ) as stream:
                assert (await stream.get_final_message()).usage.output_tokens == 87
            with server.client() as admin:
                budget = {"entityType": "customer", "entityId": "acme", "limitMicrodollars": 1}
                admin.post("/api/budgets", json=budget).raise_for_status()
            with pytest.raises(DeniedError):
                await client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES)

    asyncio.run(run())
    with NullSpend(server.admin_key, server.base_url) as ns:
        events = settled_events(ns, 2)
        assert [e.cost_microdollars for e in events] == [COST, COST]
        assert {e.customer for e in events} == {"acme"}


def test_an_async_stream_dropped_unread_is_settled_at_its_estimate(fake: tuple[str, Any]) -> None:
    """An async messages.create(stream=True) never read nor closed is settled at its estimate
    once collected, though nothing of it runs on the event loop: its reservation no longer
    holds the budget for an hour."""
    ns = AsyncLocalNullSpend([LocalBudget.total(5_000_000)])

    async def drop_an_unread_stream() -> int:
        client = ns.anthropic(**client_kwargs(fake))
        stream = await client.messages.create(
            model=MODEL, max_tokens=200, messages=MESSAGES, stream=True
        )
        (status,) = await ns.budget_status()
        del stream
        gc.collect()
        return status.reserved_microdollars

    estimate = asyncio.run(drop_an_unread_stream())
    assert estimate > 0
    assert released_budget(ns.engine).spend_microdollars == estimate
    assert [e.cost_microdollars for e in ns.engine.cost_events().data] == [estimate]


def test_a_message_batch_is_refused_and_its_cancel_is_not(fake: tuple[str, Any]) -> None:
    """A message batch cannot be priced when it is created: sent uncounted, it ran any number
    of calls past a hard cap. It is refused before anything is sent; cancelling one is free."""
    ns = AsyncLocalNullSpend([LocalBudget.total(5_000_000)])

    async def batch_then_cancel() -> None:
        client = ns.anthropic(**client_kwargs(fake))
        request = {
            "custom_id": "1",
            "params": {"model": MODEL, "max_tokens": 9, "messages": MESSAGES},
        }
        with pytest.raises(UnmeteredRouteError) as refused:
            await client.messages.batches.create(requests=[request])  # type: ignore[list-item]
        assert isinstance(refused.value, anthropic.AnthropicError)
        assert refused.value.details == {"path": "/v1/messages/batches"}
        assert fake[1].state.requests == []
        with pytest.raises(anthropic.NotFoundError):  # it reached the fake: no such batch
            await client.messages.batches.cancel("msgbatch_1")

    asyncio.run(batch_then_cancel())
    assert [r["path"] for r in fake[1].state.requests] == ["/v1/messages/batches/msgbatch_1/cancel"]
    assert ns.engine.cost_events().data == []


@pytest.mark.parametrize("stream", [False, True])
def test_compaction_and_advisor_iterations_are_billed(fake: tuple[str, Any], stream: bool) -> None:
    """The passes compaction and the advisor tool bill besides the answer, which its top-level
    usage leaves out (``usage.iterations``), are priced each at its own model: the docs'
    compaction example (180,000 tokens summarized, 23,000 answered, on Sonnet 4.5 at $3 / $15)
    and an advisor call on Opus 4.8 ($5 / $25)."""
    usage = {"input": 23000, "cached": 0, "output": 1000, "reasoning": 0, "cache_write": 0}
    iterations = [
        {"type": "compaction", "input": 180000, "output": 3500},
        {"type": "advisor_message", "model": "claude-opus-4-8", "input": 21000, "output": 1600},
    ]
    bill = (23000 * 3 + 1000 * 15) + (180000 * 3 + 3500 * 15) + (21000 * 5 + 1600 * 25)
    kwargs = client_kwargs(fake)
    kwargs["default_headers"] = {
        "x-fake-usage": json.dumps(usage),
        "x-fake-iterations": json.dumps(iterations),
    }
    ns = LocalNullSpend([LocalBudget.total(100_000_000)])
    client = ns.anthropic(**kwargs)
    request: Any = {
        "model": MODEL,
        "max_tokens": 1000,
        "messages": MESSAGES,
        "betas": ["compact-2026-01-12", "advisor-tool-2026-03-01"],
        "context_management": {"edits": [{"type": "compact_20260112"}]},
        "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-8"}],
    }
    if stream:
        with client.beta.messages.stream(**request) as streamed:
            assert streamed.get_final_message().usage.iterations is not None
    else:
        assert client.beta.messages.create(**request).usage.iterations is not None
    (event,) = ns.cost_events().data
    assert event.cost_microdollars == bill  # 821,500: the top-level counts alone say 84,000
    assert (event.input_tokens, event.output_tokens) == (224000, 6100)


def gzip_kwargs(fake: tuple[str, Any], gzip: str) -> dict[str, Any]:
    kwargs = client_kwargs(fake)
    return {**kwargs, "default_headers": {**kwargs["default_headers"], "x-fake-gzip": gzip}}


@pytest.mark.parametrize("gzip", ["accepted", "always"])
def test_a_gzipped_stream_is_priced_from_its_usage(fake: tuple[str, Any], gzip: str) -> None:
    """Anthropic's API gzips an event stream for a client that accepts gzip (httpx always
    does), as many gateways do: a stream is asked for unencoded, and one encoded even so (a
    gateway that ignores the asking) is decoded before its usage is read."""
    ns = LocalNullSpend([LocalBudget.total(100_000_000)])
    finals = []
    for client in (
        anthropic.Anthropic(**gzip_kwargs(fake, gzip)),
        ns.anthropic(**gzip_kwargs(fake, gzip)),
    ):
        with client.messages.stream(model=MODEL, max_tokens=1024, messages=MESSAGES) as stream:
            finals.append(stream.get_final_message())
    assert finals[1] == finals[0]
    assert fake[1].state.requests[-1]["headers"]["accept-encoding"] == "identity"
    (event,) = ns.cost_events().data
    assert event.cost_microdollars == COST


def test_an_async_gzipped_stream_is_priced_from_its_usage(fake: tuple[str, Any]) -> None:
    ns = AsyncLocalNullSpend([LocalBudget.total(100_000_000)])

    async def stream_it() -> None:
        client = ns.anthropic(**gzip_kwargs(fake, "always"))
        async with client.messages.stream(
            model=MODEL, max_tokens=1024, messages=MESSAGES
        ) as stream:
            assert (await stream.get_final_message()).usage.output_tokens == USAGE["output"]

    asyncio.run(stream_it())
    (event,) = ns.engine.cost_events().data
    assert event.cost_microdollars == COST


@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_client_keeps_the_sdks_http_defaults(
    monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    """Anthropic's: TCP keep-alive probes on its sockets too."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    kwargs = {"api_key": "sk-ant-test"}
    if asynchronous:
        plain: Any = anthropic.AsyncAnthropic(**kwargs)
        tracked: Any = AsyncLocalNullSpend([LocalBudget.total(1)]).anthropic(**kwargs)
    else:
        plain = anthropic.Anthropic(**kwargs)
        tracked = LocalNullSpend([LocalBudget.total(1)]).anthropic(**kwargs)
    assert plain._client._transport._pool._socket_options  # SO_KEEPALIVE, TCP_KEEPIDLE...
    assert_the_sdks_http_defaults(plain, tracked)


def test_the_callers_own_http_client_is_metered(fake: tuple[str, Any]) -> None:
    """Anthropic's SDK takes an httpx2 client: metered with httpx2's byte streams."""
    import httpx2

    ns = LocalNullSpend([LocalBudget.total(5_000_000)])
    client = ns.anthropic(http_client=httpx2.Client(timeout=30), **client_kwargs(fake))
    client.messages.create(model=MODEL, max_tokens=200, messages=MESSAGES)
    with client.messages.stream(model=MODEL, max_tokens=200, messages=MESSAGES) as stream:
        stream.get_final_message()
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST, COST]
