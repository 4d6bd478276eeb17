"""``ns.openai()``: a real ``openai.OpenAI`` (and ``AsyncOpenAI``) whose transport reserves,
forwards to the provider directly (the fake upstream), prices the answer and settles; streams
reach the caller as the provider would have sent them."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import json
import pickle
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse
from starlette.routing import Route

from nullspend.client import AsyncNullSpend, BudgetStatus, NullSpend, renewal
from nullspend.embedded import AsyncLocalNullSpend, LocalBudget, LocalNullSpend
from nullspend.errors import (
    BudgetExceededError,
    BudgetUnavailableError,
    DeniedError,
    UnmeteredRouteError,
)
from nullspend.tracked.metering import ANTHROPIC_ROUTES, OPENAI_ROUTES, spends_unpriced
from tests.estimates import reserved_estimates
from tests.fakes.interposed import HeldSettles, interposed
from tests.fakes.upstream import serving
from tests.nullspend_server.conftest import RunningServer, start_server

USAGE = {"input": 1200, "cached": 1024, "output": 90, "reasoning": 0, "cache_write": 0}
# gpt-4o-mini: $0.15 input, $0.075 cached, $0.60 output per million tokens
COST = round((1200 - 1024) * 0.15 + 1024 * 0.075 + 90 * 0.6)
MESSAGES = [{"role": "user", "content": "Hello"}]


def client_kwargs(fake: tuple[str, Any]) -> dict[str, Any]:
    return {
        "base_url": f"{fake[0]}/v1",
        "api_key": "sk-test",
        "max_retries": 0,
        "default_headers": {"x-fake-usage": json.dumps(USAGE)},
    }


def settled_events(ns: NullSpend, count: int) -> list[Any]:
    deadline = time.monotonic() + 5
    while len(events := ns.cost_events().data) < count:
        assert time.monotonic() < deadline, "not settled"
        time.sleep(0.02)
    return events


def released_budget(ns: LocalNullSpend) -> BudgetStatus:
    """The one budget, once nothing is reserved against it (a dropped stream settles from a
    thread of its own)."""
    deadline = time.monotonic() + 5
    while (status := ns.budget_status()[0]).reserved_microdollars:
        assert time.monotonic() < deadline, "still reserved"
        time.sleep(0.02)
    return status


def test_a_call_is_reserved_priced_and_settled(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        client = ns.customer("acme").scoped(session_id="s-1").openai(**client_kwargs(fake))
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=100
        )
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == 1200
        (event,) = settled_events(ns, 1)
        assert (event.provider, event.model, event.cost_microdollars) == (
            "openai",
            completion.model,
            COST,
        )
        assert (event.customer, event.session_id) == ("acme", "s-1")
        assert (event.input_tokens, event.cached_input_tokens) == (176, 1024)
        assert event.reservation_id is not None
        forwarded = fake[1].state.requests[-1]
        assert forwarded["headers"]["authorization"] == "Bearer sk-test"


def test_a_stream_is_passed_through_unchanged_and_priced(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        client = ns.openai(**client_kwargs(fake))
        chunks = list(
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        )
        assert chunks
        assert all(chunk.usage is None and chunk.choices for chunk in chunks)  # as asked
        assert fake[1].state.requests[-1]["json"]["stream_options"] == {"include_usage": True}
        with client.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        ) as stream:
            kept = list(stream)
        assert kept[-1].usage is not None  # asked for by the caller: kept
        events = settled_events(ns, 2)
        assert [e.cost_microdollars for e in events] == [COST, COST]
        # The body goes as the SDK wrote it, the option added at its end: not encoded again.
        said = [{"role": "user", "content": "Un café, s'il vous plaît"}]
        list(client.chat.completions.create(model="gpt-4o-mini", messages=said, stream=True))
        sent = fake[1].state.requests[-1]["raw"]
        assert "café".encode() in sent
        assert sent.endswith(b',"stream_options":{"include_usage":true}}')


def test_a_denied_call_raises_before_anything_is_sent(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    with NullSpend(server.admin_key, server.base_url) as ns:
        with server.client() as admin:
            budget = {"entityType": "customer", "entityId": "acme", "limitMicrodollars": 10}
            admin.post("/api/budgets", json=budget).raise_for_status()
        client = ns.customer("acme").openai(**{**client_kwargs(fake), "max_retries": 2})
        with pytest.raises(DeniedError) as denied:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert denied.value.code == "customer_budget_exceeded"
        assert isinstance(denied.value, openai.OpenAIError)  # the SDK let it through, unretried
        assert fake[1].state.requests == []
        # Not the customer's: admitted.
        ns.openai(**client_kwargs(fake)).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        assert len(fake[1].state.requests) == 1


def test_an_unreachable_server_fails_closed(fake: tuple[str, Any]) -> None:
    with (
        NullSpend("ns_live_sk_" + "1" * 32, "http://127.0.0.1:9", max_retries=0) as ns,
        pytest.raises(BudgetUnavailableError),
    ):
        ns.openai(**client_kwargs(fake)).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert fake[1].state.requests == []


def test_async_openai(server: RunningServer, fake: tuple[str, Any]) -> None:
    async def run() -> None:
        async with AsyncNullSpend(server.admin_key, server.base_url) as ns:
            client = ns.customer("acme").openai(**client_kwargs(fake))
            completion = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES
            )
            assert completion.choices
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True
            )
            assert [c async for c in stream]
            with server.client() as admin:
                budget = {"entityType": "customer", "entityId": "acme", "limitMicrodollars": 1}
                admin.post("/api/budgets", json=budget).raise_for_status()
            with pytest.raises(DeniedError):
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    asyncio.run(run())
    with NullSpend(server.admin_key, server.base_url) as ns:
        events = settled_events(ns, 2)
        assert [e.cost_microdollars for e in events] == [COST, COST]
        assert {e.customer for e in events} == {"acme"}


def test_an_async_answer_does_not_wait_for_the_settle(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    """The event loop gets the provider's answer at once; the settle follows from a thread
    (held here until the call has returned), an awaited read waits for it, and one still queued
    when the loop ends is sent all the same."""
    held = HeldSettles()

    async def run(base_url: str) -> None:
        ns = AsyncNullSpend(server.admin_key, base_url)
        # A scoped copy settles through the same thread: a read on ns waits for its settles.
        client = ns.customer("acme").openai(**client_kwargs(fake))
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        held.order.append("call returned")
        assert not await ns.flush(timeout=0)  # the scoped copy's settle, still held
        held.may_go.set()
        assert [e.cost_microdollars for e in (await ns.cost_events()).data] == [COST]
        held.may_go.clear()
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        assert [chunk async for chunk in stream]
        held.order.append("stream read")
        # The loop ends with that settle still held, and the client never closed.

    with interposed(server.base_url, held) as base_url:
        asyncio.run(run(base_url))
        held.may_go.set()
        with NullSpend(server.admin_key, server.base_url) as ns:
            events = settled_events(ns, 2)
    assert held.order == ["call returned", "settle answered", "stream read", "settle answered"]
    assert [e.cost_microdollars for e in events] == [COST, COST]


def test_only_the_providers_priced_routes_are_metered(fake: tuple[str, Any]) -> None:
    """OpenAI's Assistants API has a free POST .../threads/{id}/messages: read as Anthropic's
    /messages, it was reserved and charged the $1 an unknown model is assumed to cost."""
    ns = LocalNullSpend([LocalBudget.total(500_000)])
    client = ns.openai(**client_kwargs(fake))
    with pytest.raises(
        openai.NotFoundError
    ):  # it reached the provider (the fake has no such route)
        client.beta.threads.messages.create("thread_1", role="user", content="Hello")
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (0, 0)
    assert ns.cost_events().data == []


def test_a_request_that_may_spend_unpriced_is_refused_before_it_is_sent(
    fake: tuple[str, Any],
) -> None:
    """Embeddings, a batch, an image cannot be priced: they were sent uncounted, so a batch of
    any size went through a hard cap. They are refused before anything is sent, as the proxy
    refuses them; what costs nothing (cancelling a batch) still reaches the provider."""
    ns = LocalNullSpend([LocalBudget.total(5_000_000)])
    reserved = reserved_estimates(ns)
    client = ns.openai(**client_kwargs(fake))
    unpriced_calls = [
        lambda: client.embeddings.create(model="text-embedding-3-small", input="Hello"),
        lambda: client.batches.create(
            input_file_id="file_1", endpoint="/v1/chat/completions", completion_window="24h"
        ),
        lambda: client.images.generate(model="gpt-image-1", prompt="a lighthouse"),
    ]
    for unpriced_call in unpriced_calls:
        with pytest.raises(UnmeteredRouteError) as refused:
            unpriced_call()
        assert isinstance(refused.value, openai.OpenAIError)
        assert isinstance(refused.value, DeniedError)
        assert refused.value.code == "not_found"
        assert "allow_unmetered=True" in refused.value.message
    assert refused.value.details == {"path": "/v1/images/generations"}
    assert fake[1].state.requests == []
    with pytest.raises(openai.NotFoundError):  # it reached the fake, which has no such batch
        client.batches.cancel("batch_1")
    assert [r["path"] for r in fake[1].state.requests] == ["/v1/batches/batch_1/cancel"]
    assert reserved == []
    assert ns.cost_events().data == []


def test_a_client_built_to_allow_unmetered_requests_sends_them_uncounted(
    fake: tuple[str, Any],
) -> None:
    ns = AsyncLocalNullSpend([LocalBudget.total(1)])

    async def embed_then_chat() -> Any:
        client = ns.openai(allow_unmetered=True, **client_kwargs(fake))
        embedded = await client.embeddings.create(
            model="text-embedding-3-small", input=["Hello", "again"]
        )
        with pytest.raises(DeniedError):  # the priced routes are metered as ever
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return embedded

    embedded = asyncio.run(embed_then_chat())
    assert [e.embedding for e in embedded.data] == [[0.25, -0.5, 1.0]] * 2
    assert [r["path"] for r in fake[1].state.requests] == ["/v1/embeddings"]
    assert ns.engine.budget_status()[0].spend_microdollars == 0
    assert ns.engine.cost_events().data == []


def test_the_responses_stream_helper_is_priced(fake: tuple[str, Any]) -> None:
    """``responses.stream()`` builds the answer up from the stream's item and part events;
    the caller gets the whole answer, and the call its usage's cost."""
    ns = LocalNullSpend()
    client = ns.openai(**client_kwargs(fake))
    with client.responses.stream(model="gpt-4o-mini", input="Hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Hello there! 世界 🚀"
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST]


def test_the_sdks_websocket_modes_are_refused(fake: tuple[str, Any]) -> None:
    """``responses.connect()`` and ``realtime.connect()`` open a WebSocket of their own, past
    the metered transport: under a cap of $5 a realtime session would have spent uncapped. A
    copy of the client (``with_options()``, ``copy()``) refuses them too."""
    ns = LocalNullSpend([LocalBudget.total(5_000_000)])
    tracked = [
        ns.openai(**client_kwargs(fake)),
        AsyncLocalNullSpend().openai(**client_kwargs(fake)),
    ]
    derived = [client.with_options(timeout=30).copy(max_retries=1) for client in tracked]
    for client in [*tracked, *derived]:
        sockets = [client.responses, client.realtime, client.beta.realtime, client.beta.responses]
        for resource in sockets:
            with pytest.raises(UnmeteredRouteError) as refused:
                resource.connect(model="gpt-realtime")
            assert isinstance(refused.value, openai.OpenAIError)
    assert fake[1].state.requests == []
    allowed = ns.openai(allow_unmetered=True, **client_kwargs(fake))
    for client in (allowed, allowed.with_options(timeout=30)):
        manager = client.realtime.connect(model="gpt-realtime")  # connects once entered
        assert type(manager).__name__ == "RealtimeConnectionManager"


def test_a_stream_dropped_unread_is_settled_at_its_estimate(fake: tuple[str, Any]) -> None:
    """A stream the caller neither reads nor closes (as returned, or through with_raw_response)
    no longer holds its reservation for an hour, blocking the budget: once collected it is
    settled at its estimate."""
    ns = LocalNullSpend([LocalBudget.total(5_000_000)])
    client = ns.openai(**client_kwargs(fake))
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    estimate = ns.budget_status()[0].reserved_microdollars // 2  # the same call twice
    assert estimate > 0
    del stream, raw
    gc.collect()
    assert released_budget(ns).spend_microdollars == 2 * estimate
    assert [e.cost_microdollars for e in ns.cost_events().data] == [estimate, estimate]


def slow_stream_kwargs(fake: tuple[str, Any]) -> dict[str, Any]:
    """A stream of 8 events 300 ms apart: about 2.4 s, past a 1 s reservation lifetime."""
    kwargs = client_kwargs(fake)
    return {**kwargs, "default_headers": {**kwargs["default_headers"], "x-fake-fault": "slow:300"}}


def test_a_stream_that_outlasts_its_reservation_is_charged_its_usage(
    database_url: str, fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider's timeout is per chunk, so a stream can outlast its reservation's TTL: it
    was charged its estimate when it expired, and its real settle refused. It now renews its
    reservation while its chunks come."""
    monkeypatch.setattr(renewal, "RENEW_SECONDS", 0.3)
    server = start_server(database_url, reservation_ttl_seconds=1, heartbeat_seconds=0.2)
    try:
        with NullSpend(server.admin_key, server.base_url) as ns:
            client = ns.openai(**slow_stream_kwargs(fake))
            started = time.monotonic()
            chunks = list(
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            )
            assert chunks
            assert time.monotonic() - started > 2  # twice the TTL
            (event,) = settled_events(ns, 1)
            assert event.cost_microdollars == COST
            assert not event.tags  # not _ns_expired
    finally:
        server.stop()


def test_an_async_stream_that_outlasts_its_reservation_is_charged_its_usage(
    fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same in-process, on an async client (the engine's reservations live an hour unless
    set; here one second): a call made while the stream goes on sweeps what expired."""
    monkeypatch.setattr(renewal, "RENEW_SECONDS", 0.3)
    ns = AsyncLocalNullSpend(
        [LocalBudget.total(5_000_000)], reservation_ttl=dt.timedelta(seconds=1)
    )

    async def read() -> None:
        client = ns.openai(**slow_stream_kwargs(fake))
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        assert [chunk async for chunk in stream]

    async def call_meanwhile() -> None:
        await asyncio.sleep(1.6)
        await ns.openai(**client_kwargs(fake)).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )

    async def both() -> None:
        await asyncio.gather(read(), call_meanwhile())

    asyncio.run(both())
    events = ns.engine.cost_events().data
    assert [(e.cost_microdollars, e.tags) for e in events] == [(COST, {}), (COST, {})]


def test_concurrent_calls_with_images_by_url_stay_under_a_hard_cap(fake: tuple[str, Any]) -> None:
    """An image given by URL was estimated at its URL's bytes (193 µ$ for a call billed 3,852:
    OpenAI bills gpt-4o-mini 25,501 tokens for one 1024-px image at high detail): 50 concurrent
    calls spent 9.6 times a 20,000 µ$ cap. Each image now reserves the most one can bill."""
    cap = 20_000
    ns = AsyncLocalNullSpend([LocalBudget.total(cap)])
    billed = {**USAGE, "input": 25_501, "cached": 0}
    kwargs = client_kwargs(fake)
    client = ns.openai(**{**kwargs, "default_headers": {"x-fake-usage": json.dumps(billed)}})
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    content = [{"type": "text", "text": "What is this?"}, image]

    async def call() -> bool:
        try:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": content}], max_tokens=50
            )
        except DeniedError:
            return False
        return True

    async def all_at_once() -> list[bool]:
        return await asyncio.gather(*(call() for _ in range(50)))

    served = sum(asyncio.run(all_at_once()))
    (status,) = ns.engine.budget_status()
    assert 0 < served == len(fake[1].state.requests) == len(ns.engine.cost_events().data)
    assert status.spend_microdollars <= cap
    assert status.reserved_microdollars == 0


def test_a_call_that_failed_after_it_was_sent_is_charged_not_released(
    fake: tuple[str, Any],
) -> None:
    """A request the provider took and the client then gave up on (a read timeout, a
    cancellation) is billed all the same: charged its estimate, as the proxy charges a call its
    client left (it was released). One that never reached the provider (no connection) is
    still released."""
    ns = LocalNullSpend([LocalBudget.total(10**9)])
    kwargs = client_kwargs(fake)
    hanging = ns.openai(
        **{
            **kwargs,
            "timeout": 0.3,
            "default_headers": {**kwargs["default_headers"], "x-fake-fault": "hang"},
        }
    )
    with pytest.raises(openai.APITimeoutError):
        hanging.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    (status,) = ns.budget_status()
    assert status.reserved_microdollars == 0
    (charged,) = ns.cost_events().data
    assert charged.cost_microdollars == status.spend_microdollars > 0
    unreachable = ns.openai(**{**kwargs, "base_url": "http://127.0.0.1:9/v1"})
    with pytest.raises(openai.APIConnectionError):
        unreachable.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert len(ns.cost_events().data) == 1  # released
    assert ns.budget_status()[0].reserved_microdollars == 0


def test_a_compaction_is_metered_and_the_free_responses_calls_are_not(
    fake: tuple[str, Any],
) -> None:
    """responses.compact runs the model over the conversation and is billed for its usage:
    under a spent cap it is denied before anything is sent, and otherwise charged its usage
    at the model asked for (a compaction names none). Counting input tokens, cancelling
    and reading back a response cost nothing and still reach the provider."""
    ns = LocalNullSpend([LocalBudget.total(1)])
    client = ns.openai(**client_kwargs(fake))
    with pytest.raises(DeniedError):
        client.responses.compact(model="gpt-4o-mini", input="Hello")
    assert fake[1].state.requests == []
    counted = LocalNullSpend()
    counted.openai(**client_kwargs(fake)).responses.compact(model="gpt-4o-mini", input="Hello")
    (event,) = counted.cost_events().data
    assert (event.model, event.cost_microdollars) == ("gpt-4o-mini", COST)
    fake[1].state.requests.clear()
    free_calls = [
        lambda: client.responses.input_tokens.count(model="gpt-4o-mini", input="Hello"),
        lambda: client.responses.cancel("resp_1"),
        lambda: client.responses.retrieve("resp_1"),
    ]
    for free_call in free_calls:
        with pytest.raises(openai.NotFoundError):  # reached the fake, which has no such route
            free_call()
    (status,) = ns.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (0, 0)
    assert ns.cost_events().data == []


@pytest.mark.parametrize("tier", ["priority", "flex"])
def test_a_call_served_in_a_service_tier_is_priced_and_estimated_at_its_rates(
    fake: tuple[str, Any], tier: str
) -> None:
    """OpenAI's priority processing costs about twice the standard rate and flex about half;
    the answer names the tier that served it, on both APIs, streamed or not."""
    from nullspend.pricing import cost
    from nullspend.usage import Usage

    model = "gpt-5-mini"
    usage = Usage(input_tokens=1200 - 1024, cache_read_tokens=1024, output_tokens=90)
    expected = cost(usage, model, service_tier=tier).total_microdollars
    assert expected != cost(usage, model).total_microdollars
    ns = LocalNullSpend()
    reserved = reserved_estimates(ns)
    client = ns.openai(**client_kwargs(fake))
    chat = {"model": model, "messages": MESSAGES, "max_completion_tokens": 500}
    responses = {"model": model, "input": "Hello", "max_output_tokens": 500}
    client.chat.completions.create(**chat, service_tier=tier)
    list(client.chat.completions.create(**chat, service_tier=tier, stream=True))
    client.responses.create(**responses, service_tier=tier)
    list(client.responses.create(**responses, service_tier=tier, stream=True))
    assert [event.cost_microdollars for event in ns.cost_events().data] == [expected] * 4
    # The estimate prices the tier the request asks for ("auto" may be served either way).
    client.chat.completions.create(**chat, service_tier="auto")
    served, standard = reserved[0], reserved[-1]
    assert served != standard
    assert (served > standard) is (tier == "priority")


@pytest.mark.parametrize(
    ("method", "path", "refused"),
    [
        ("POST", "/v1/embeddings", True),
        ("POST", "/v1/batches", True),
        ("POST", "/v1/messages/batches", True),  # Anthropic's
        ("POST", "/v1/threads/runs", True),  # creates a thread and runs it
        ("POST", "/v1/threads/thread_1/runs", True),
        ("POST", "/v1/completions", True),
        ("POST", "/v1/organizations/acme/openai/v1/embeddings", True),  # a gateway's prefix
        ("POST", "/v1/fine_tuning/jobs/ftjob_1/resume", True),  # training goes on
        ("POST", "/v1/chat/completions/batch", True),  # not a stored completion's id
        ("POST", "/v1/batches/batch_1/cancel", False),
        ("POST", "/v1/threads/thread_1/messages", False),
        ("POST", "/v1/chat/completions/chatcmpl-1", False),  # a stored completion's metadata
        ("POST", "/v1/vector_stores/vs_1/files/file_1", False),
        ("POST", "/v1/messages/count_tokens", False),  # Anthropic's
        ("GET", "/v1/batches", False),
        ("DELETE", "/v1/files/file_1", False),
    ],
)
def test_which_requests_may_spend_unpriced(method: str, path: str, refused: bool) -> None:
    routes = ANTHROPIC_ROUTES if path.startswith("/v1/messages") else OPENAI_ROUTES
    assert spends_unpriced(routes, method, path) is refused


def test_a_stream_gzipped_by_a_gateway_reaches_the_caller_as_sent_and_is_priced(
    fake: tuple[str, Any],
) -> None:
    """A gateway that gzips an event stream though the request asked for it unencoded: it is
    decoded as it arrives, so the caller gets each chunk when the plain SDK would, without the
    usage chunk asked for on its behalf, and the usage is read."""
    kwargs = client_kwargs(fake)
    headers = {**kwargs["default_headers"], "x-fake-gzip": "always", "x-fake-fault": "slow:100"}
    kwargs["default_headers"] = headers
    ns = LocalNullSpend([LocalBudget.total(100_000_000)])
    seen = []
    for client in (openai.OpenAI(**kwargs), ns.openai(**kwargs)):
        started, arrivals, chunks = time.perf_counter(), [], []
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        ):
            arrivals.append(time.perf_counter() - started)
            chunks.append(chunk)
        assert arrivals[0] < arrivals[-1] / 2  # as they arrive, not once all are in
        seen.append(chunks)
    assert seen[1] == seen[0]
    assert all(chunk.usage is None and chunk.choices for chunk in seen[1])
    (event,) = ns.cost_events().data
    assert event.cost_microdollars == COST


def assert_the_sdks_http_defaults(plain: Any, tracked: Any) -> None:
    """``tracked``'s HTTP client is set up as the plain SDK client's own (connection limits,
    redirects, socket options, the environment's proxies), each of its transports metered."""
    assert tracked._client.follow_redirects is plain._client.follow_redirects is True
    ours, theirs = plain._client._transport._pool, tracked._client._transport.inner._pool
    assert theirs._max_connections == ours._max_connections == 1000
    assert theirs._max_keepalive_connections == ours._max_keepalive_connections
    assert theirs._socket_options == ours._socket_options
    assert plain._client._mounts  # the environment's proxy
    assert [type(t.inner) for t in tracked._client._mounts.values()] == [
        type(t) for t in plain._client._mounts.values()
    ]


@pytest.mark.parametrize("asynchronous", [False, True])
def test_the_client_keeps_the_sdks_http_defaults(
    monkeypatch: pytest.MonkeyPatch, asynchronous: bool
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    kwargs = {"api_key": "sk-test"}
    if asynchronous:
        plain: Any = openai.AsyncOpenAI(**kwargs)
        tracked: Any = AsyncLocalNullSpend([LocalBudget.total(1)]).openai(**kwargs)
    else:
        plain = openai.OpenAI(**kwargs)
        tracked = LocalNullSpend([LocalBudget.total(1)]).openai(**kwargs)
    assert_the_sdks_http_defaults(plain, tracked)


def test_the_callers_own_http_client_is_metered(fake: tuple[str, Any]) -> None:
    """``http_client=`` (a company's certificates, proxy, timeouts) used to raise a TypeError
    (``got multiple values``); a copy given one of its own (``with_options(http_client=...)``)
    would have spent past the cap. Both are now metered; one HTTP client is never metered
    twice (each of its calls would be reserved twice)."""
    seen: list[str] = []
    ns = LocalNullSpend([LocalBudget.total(5_000_000)])
    given = httpx.Client(event_hooks={"request": [lambda request: seen.append(request.url.path)]})
    client = ns.openai(http_client=given, **client_kwargs(fake))
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    copied = client.with_options(http_client=httpx.Client(), timeout=30)
    copied.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert seen == ["/v1/chat/completions"]
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST, COST]
    with pytest.raises(ValueError, match="metered already"):
        ns.openai(http_client=given, **client_kwargs(fake))
    with pytest.raises(TypeError, match="async http_client"):
        AsyncLocalNullSpend().openai(http_client=httpx.Client(), **client_kwargs(fake))

    async def run() -> None:
        async_ns = AsyncLocalNullSpend([LocalBudget.total(5_000_000)])
        async with httpx.AsyncClient() as given:
            client = async_ns.openai(http_client=given, **client_kwargs(fake))
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert [e.cost_microdollars for e in (await async_ns.cost_events()).data] == [COST]

    asyncio.run(run())


def test_a_redirect_is_followed_and_the_call_metered_once(fake: tuple[str, Any]) -> None:
    """A gateway (or base URL) that redirects: followed, as by the plain SDK; the redirect
    itself releases its reservation."""

    async def moved(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{fake[0]}{request.url.path.removeprefix('/old')}", 307)

    gateway = Starlette(routes=[Route("/old/{path:path}", moved, methods=["POST"])])
    ns = LocalNullSpend([LocalBudget.total(100_000_000)])
    with serving(gateway) as base_url:
        client = ns.openai(**{**client_kwargs(fake), "base_url": f"{base_url}/old/v1"})
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST]
    assert released_budget(ns).spend_microdollars == COST


@pytest.mark.parametrize("gzip", ["", "accepted"])
def test_a_raw_response_is_handed_on_as_the_sdk_gives_it(fake: tuple[str, Any], gzip: str) -> None:
    """``with_raw_response``: the answer read for its usage (gzipped or not) is handed on
    unclosed, so it is timed as the plain SDK's is (``.elapsed``)."""
    kwargs = client_kwargs(fake)
    kwargs["default_headers"] = {**kwargs["default_headers"], "x-fake-gzip": gzip}
    ns = LocalNullSpend([LocalBudget.total(100_000_000)])
    raw = ns.openai(**kwargs).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert raw.elapsed.total_seconds() > 0
    assert raw.headers.get("content-encoding") == ("gzip" if gzip else None)
    assert raw.parse().usage is not None
    assert [e.cost_microdollars for e in ns.cost_events().data] == [COST]

    async def async_raw() -> float:
        client = AsyncLocalNullSpend().openai(**kwargs)
        answer = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        return answer.elapsed.total_seconds()

    assert asyncio.run(async_raw()) > 0


def deny_over_budget() -> None:
    ns = LocalNullSpend([LocalBudget.total(1)])
    client = ns.openai(api_key="sk-test", base_url="http://127.0.0.1:9/v1", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_a_denial_pickles_as_itself() -> None:
    """The typed denial, also the SDK's error, reaches a caller in another process as itself
    (``ProcessPoolExecutor``, ``multiprocessing``), not as a ``PicklingError``."""
    with pytest.raises(BudgetExceededError) as denied:
        deny_over_budget()
    again = pickle.loads(pickle.dumps(denied.value))
    assert type(again) is type(denied.value)
    assert isinstance(again, openai.OpenAIError)
    assert (again.args, again.__dict__) == (denied.value.args, denied.value.__dict__)
    with ProcessPoolExecutor(1) as pool, pytest.raises(BudgetExceededError) as in_worker:
        pool.submit(deny_over_budget).result()
    assert isinstance(in_worker.value, openai.OpenAIError)
    assert in_worker.value.details == denied.value.details


def test_an_async_call_cancelled_before_it_was_sent_is_released(fake: tuple[str, Any]) -> None:
    """An async call cancelled while it waited for a pooled connection never reached the
    provider: released, not charged its estimate. One cancelled once sent still is."""
    ns = AsyncLocalNullSpend([LocalBudget.total(10**9)])
    kwargs = client_kwargs(fake)
    hanging = {**kwargs["default_headers"], "x-fake-fault": "hang"}

    async def cancel_waiting_then_sent() -> None:
        client = ns.openai(**kwargs)
        client._client._transport.inner._pool._max_connections = 1  # all busy with one stream
        held = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True
        )
        waiting = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(waiting, 0.3)
        await held.close()
        assert len(fake[1].state.requests) == 1
        assert len((await ns.cost_events()).data) == 1  # the stream, closed unread
        sent = client.with_options(default_headers=hanging).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sent, 0.3)
        assert len((await ns.cost_events()).data) == 2

    asyncio.run(cancel_waiting_then_sent())
    assert released_budget(ns.engine).reserved_microdollars == 0


def test_an_async_call_cancelled_in_its_proxys_tunnel_is_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through an HTTPS proxy, httpcore first sends a CONNECT with the request's extensions: a
    call cancelled after it, in the TLS handshake with the provider, was taken as sent and
    charged its estimate."""

    async def tunnel_to_nowhere(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(60)  # the provider's TLS handshake never comes

    async def cancelled_in_the_tunnel() -> None:
        proxy = await asyncio.start_server(tunnel_to_nowhere, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
        client = ns.openai(base_url="https://provider.invalid/v1", api_key="sk-test")
        call = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call, 0.5)
        proxy.close()

    ns = AsyncLocalNullSpend([LocalBudget.total(10**9)])
    asyncio.run(cancelled_in_the_tunnel())
    budget = released_budget(ns.engine)
    assert (budget.spend_microdollars, budget.reserved_microdollars) == (0, 0)


@pytest.mark.parametrize(
    "usage",
    [
        {"input": 10**30, "output": 5},  # counts past a BIGINT
        {"input": 10**16, "output": 5},  # storable, but $1.5B: past one call's most
    ],
)
def test_usage_no_call_can_have_is_charged_its_estimate(
    fake: tuple[str, Any], usage: dict[str, int]
) -> None:
    """A broken gateway's count of 10**30 prompt tokens priced a call above one call's most:
    its settle was refused, so the call was never recorded and its reservation held until it
    expired. It is recorded at its estimate, without the usage."""
    ns = LocalNullSpend([LocalBudget.total(5_000_000)])
    kwargs = client_kwargs(fake)
    client = ns.openai(**{**kwargs, "default_headers": {"x-fake-usage": json.dumps(usage)}})
    reserved = reserved_estimates(ns)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    status = released_budget(ns)
    (event,) = ns.cost_events().data
    assert event.cost_microdollars == status.spend_microdollars == reserved[0] > 0
    assert event.input_tokens == 0
