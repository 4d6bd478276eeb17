"""``NullSpendCallbackHandler`` with the real langchain-openai and langchain-anthropic chat
models and a LangGraph prebuilt agent, against the fake upstream and a real server."""

from __future__ import annotations

import asyncio
import json
import operator
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseLLM
from langchain_core.messages import HumanMessage
from langchain_core.outputs import Generation, LLMResult
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from starlette.requests import Request
from starlette.responses import Response

from nullspend.client import NullSpend, renewal
from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend.errors import ConnectionFailedError, CustomerBudgetExceededError, DeniedError
from nullspend.money import PICODOLLARS_PER_MICRODOLLAR
from nullspend.pricing import cost, default_catalog, estimate_request_body
from nullspend.usage import Usage
from nullspend.wire import ANTHROPIC_MESSAGES
from nullspend_langchain import NullSpendCallbackHandler
from nullspend_langchain import handler as handler_module
from tests.estimates import reserved_estimates
from tests.fakes.interposed import HeldSettles, interposed
from tests.nullspend_server.conftest import RunningServer, start_server
from tests.nullspend_server.dbtools import rows
from tests.sdk.test_client import budget
from tests.sdk.test_tracked_openai import COST, USAGE, settled_events

ANTHROPIC_USAGE = {"input": 20, "cached": 6000, "output": 87, "reasoning": 0, "cache_write": 1500}
# Claude Sonnet 4.5: $3 input, $0.30 cache read, $3.75 cache write (5 min), $15 output per M
ANTHROPIC_COST = 20 * 3 + 6000 * 3 // 10 + 1500 * 375 // 100 + 87 * 15


@pytest.fixture
def ns(server: RunningServer) -> Iterator[NullSpend]:
    with NullSpend(server.admin_key, server.base_url) as client:
        yield client


def fake_headers(usage: dict[str, int], tool_call: str) -> dict[str, str]:
    """What the fake upstream reports as usage, and the tool call it answers with (if any)."""
    return {"x-fake-usage": json.dumps(usage)} | (
        {"x-fake-tool-call": tool_call} if tool_call else {}
    )


def chat_openai(
    fake: tuple[str, Any],
    *,
    tool_call: str = "",
    fault: str = "",
    usage: dict[str, int] = USAGE,
    base: str | None = None,
    model: str = "gpt-4o-mini",
    **kwargs: Any,
) -> ChatOpenAI:
    """``model`` on the fake provider (or on ``base``, a proxy in front of it) answering
    ``usage``; ``fault`` is its ``x-fake-fault``."""
    faults = {"x-fake-fault": fault} if fault else {}
    return ChatOpenAI(
        model=model,
        base_url=f"{base or fake[0]}/v1",
        api_key="sk-test",  # type: ignore[arg-type]
        max_retries=0,
        default_headers=fake_headers(usage, tool_call) | faults,
        **kwargs,
    )


def test_invoke_batch_and_metadata(ns: NullSpend, fake: tuple[str, Any]) -> None:
    handler = NullSpendCallbackHandler(client=ns, tags={"team": "ml"})
    model = chat_openai(fake)
    reply = model.invoke(
        "Hello",
        config={"callbacks": [handler], "metadata": {"nullspend_customer": "acme"}, "tags": ["x"]},
    )
    assert reply.content
    (event,) = settled_events(ns, 1)
    assert (event.model, event.cost_microdollars, event.customer) == (
        "gpt-4o-mini",
        COST,
        "acme",
    )
    assert (event.input_tokens, event.cached_input_tokens, event.output_tokens) == (176, 1024, 90)
    assert event.tags == {"team": "ml", "x": "true", "customer": "acme"}
    assert event.trace_id is not None
    assert len(event.trace_id) == 32
    model.batch(["a", "b", "c"], config={"callbacks": [handler]})
    assert len(settled_events(ns, 4)) == 4


def test_streams_with_and_without_usage(ns: NullSpend, fake: tuple[str, Any]) -> None:
    handler = NullSpendCallbackHandler(client=ns)
    with_usage = chat_openai(fake, stream_usage=True, callbacks=[handler])
    assert "".join(str(c.content) for c in with_usage.stream("Hi"))
    (event,) = settled_events(ns, 1)
    assert event.cost_microdollars == COST
    without = chat_openai(fake, callbacks=[handler])  # a custom base_url: no stream usage
    with pytest.warns(UserWarning, match="stream_usage=True"):
        list(without.stream("Hi"))
    estimated = settled_events(ns, 2)[0]
    assert estimated.cost_microdollars > COST  # the estimate, which bounds it from above


def test_a_warning_turned_into_an_error_leaves_the_call_recorded(fake: tuple[str, Any]) -> None:
    """Under ``filterwarnings = error`` (a common pytest setting) the warning for a stream
    without usage was raised before the settle: the call its message said was "recorded at its
    estimate" was not recorded at all, its 62 µ$ reservation held for the hour. It is settled
    first, then warned."""
    import warnings

    engine = LocalNullSpend([LocalBudget.total(10**6)])
    reserved = reserved_estimates(engine)
    model = chat_openai(fake, max_tokens=100, callbacks=[NullSpendCallbackHandler(client=engine)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="recorded at its estimate"):
            list(model.stream("Hi"))
    (status,) = engine.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (reserved[0], 0)
    assert [e.cost_microdollars for e in engine.cost_events().data] == reserved


def test_a_stream_that_outlasts_its_reservation_is_charged_its_usage(
    database_url: str, fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream longer than the server's reservation TTL was charged its estimate when its
    reservation expired, and its settle refused: the handler now renews the reservation while
    tokens come."""
    monkeypatch.setattr(renewal, "RENEW_SECONDS", 0.3)
    server = start_server(database_url, reservation_ttl_seconds=1, heartbeat_seconds=0.2)
    try:
        with NullSpend(server.admin_key, server.base_url) as client:
            handler = NullSpendCallbackHandler(client=client)
            model = chat_openai(fake, fault="slow:300", stream_usage=True, callbacks=[handler])
            started = time.monotonic()
            assert "".join(str(c.content) for c in model.stream("Hi"))
            assert time.monotonic() - started > 2  # twice the TTL
            (event,) = settled_events(client, 1)
            assert (event.cost_microdollars, event.tags) == (COST, {})
    finally:
        server.stop()


def test_reasoning_counted_apart_from_the_output_never_breaks_the_call(
    fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server counting reasoning apart from ``completion_tokens`` (900 against 40) made
    ``on_llm_end`` raise out of the caller's ``invoke`` after the provider had answered, and the
    call was never settled. It is read as the wire formats read it (reasoning within the
    output); an answer whose usage cannot be read at all is recorded at its estimate."""
    engine = LocalNullSpend([LocalBudget.total(10**9)])
    reserved = reserved_estimates(engine)
    usage = {"input": 30, "cached": 0, "output": 40, "reasoning": 900, "cache_write": 0}
    model = chat_openai(fake, usage=usage, callbacks=[NullSpendCallbackHandler(client=engine)])
    assert model.invoke("Hi").content
    (event,) = engine.cost_events().data
    billed = Usage(input_tokens=30, output_tokens=40, reasoning_tokens=40)
    assert event.cost_microdollars == cost(billed, "gpt-4o-mini").total_microdollars
    assert (event.output_tokens, event.reasoning_tokens) == (40, 40)

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("an answer of a shape never seen")

    monkeypatch.setattr(handler_module, "_reading", unreadable)
    with pytest.warns(UserWarning, match="could not be read"):
        assert model.invoke("Hi").content
    assert engine.cost_events().data[0].cost_microdollars == reserved[1]
    assert engine.budget_status()[0].reserved_microdollars == 0


def test_images_by_url_stay_under_a_hard_cap(fake: tuple[str, Any]) -> None:
    """An image block given by URL was estimated at its JSON's bytes (71 µ$ for a call billed
    3,864): an abatch of 20 spent 7.7 times a 10,000 µ$ cap. Each image now reserves the most
    one can bill; an inline one is no longer priced by its base64 either."""
    cap = 30_000
    engine = LocalNullSpend([LocalBudget.total(cap)])
    billed = {**USAGE, "input": 25_501, "cached": 0}
    model = chat_openai(
        fake, usage=billed, callbacks=[NullSpendCallbackHandler(client=engine)], max_tokens=50
    )
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    prompt = [HumanMessage(content=[{"type": "text", "text": "What is this?"}, image])]

    async def twenty() -> list[Any]:
        return await model.abatch([prompt] * 20, return_exceptions=True)

    answers = asyncio.run(twenty())
    served = sum(not isinstance(a, Exception) for a in answers)
    assert all(isinstance(a, DeniedError) for a in answers if isinstance(a, Exception))
    (status,) = engine.budget_status()
    assert 0 < served == len(fake[1].state.requests)
    assert (status.reserved_microdollars, status.spend_microdollars <= cap) == (0, True)
    inline = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 2_000_000}}
    big = [HumanMessage(content=[{"type": "text", "text": "And this?"}, inline])]
    roomy = LocalNullSpend([LocalBudget.total(100_000)])  # fits the image's bound, not its bytes
    reserved = reserved_estimates(roomy)
    model.invoke(big, config={"callbacks": [NullSpendCallbackHandler(client=roomy)]})
    assert reserved[0] < 100_000


def test_a_structured_outputs_schema_stays_under_a_hard_cap(fake: tuple[str, Any]) -> None:
    """``with_structured_output`` sends its schema as ``response_format`` (ChatOpenAI) or
    ``output_config`` (ChatAnthropic's json_schema method), billed as input as a tool's is, but
    it was left out of the estimate: a 60-field schema (7.6 kB) reserved 63 µ$ for a call
    billed 360, and an abatch of 20 under a 3,000 µ$ cap spent 7,200. The schema is now
    counted, as the tracked clients count the request's body."""
    from pydantic import Field, create_model

    record = create_model(  # type: ignore[call-overload]
        "Record",
        **{
            f"field_{n}": (str, Field(description=f"Attribute {n} of the record, at some length."))
            for n in range(60)
        },
    )
    cap = 3_000
    engine = LocalNullSpend([LocalBudget.total(cap)])
    billed = {**USAGE, "input": 2_000, "cached": 0, "output": 100}  # 7.6 kB of schema
    model = chat_openai(fake, usage=billed, max_tokens=100)
    extracting = model.with_structured_output(record, include_raw=True)
    config: Any = {"callbacks": [NullSpendCallbackHandler(client=engine)]}

    async def twenty() -> list[Any]:
        return await extracting.abatch(["Extract it"] * 20, config, return_exceptions=True)

    answers = asyncio.run(twenty())
    served = sum(not isinstance(a, DeniedError) for a in answers)
    (status,) = engine.budget_status()
    assert 0 < served == len(fake[1].state.requests)
    assert (status.reserved_microdollars, status.spend_microdollars <= cap) == (0, True)
    roomy = LocalNullSpend([LocalBudget.total(10**9)])
    reserved = reserved_estimates(roomy)
    claude = chat_anthropic(fake, callbacks=[NullSpendCallbackHandler(client=roomy)])
    claude.invoke("Extract it")
    claude.with_structured_output(record, method="json_schema", include_raw=True).invoke(
        "Extract it"
    )
    schema_bytes = len(json.dumps(record.model_json_schema()))
    assert reserved[1] - reserved[0] >= schema_bytes // 3 * 3  # $3 per M input tokens


def test_an_anthropic_stream_that_reported_no_usage_is_charged_its_estimate(
    fake: tuple[str, Any],
) -> None:
    """A server answering as Anthropic's API without usage in its events: LangChain reports
    all-zero usage, which was recorded as a call that cost nothing, so a cap never stopped
    such calls (20 went through a $0.01 cap). Charged its estimate, as an OpenAI stream
    without usage is, with the same warning."""
    engine = LocalNullSpend([LocalBudget.total(10**9)])
    reserved = reserved_estimates(engine)
    model = chat_anthropic(fake, callbacks=[NullSpendCallbackHandler(client=engine)])
    model.default_headers = {**(model.default_headers or {}), "x-fake-fault": "no-usage"}
    with pytest.warns(UserWarning, match="without usage"):
        chunks = list(model.stream("Hi"))
    assert not any(c.usage_metadata and c.usage_metadata["input_tokens"] for c in chunks)
    (event,) = engine.cost_events().data
    assert event.cost_microdollars == reserved[0] > 0


def test_denied_before_the_provider_is_called(
    ns: NullSpend, server: RunningServer, fake: tuple[str, Any]
) -> None:
    with server.client() as admin:
        budget = {"entityType": "customer", "entityId": "acme", "limitMicrodollars": 10}
        admin.post("/api/budgets", json=budget).raise_for_status()
    handler = NullSpendCallbackHandler(client=ns, customer="acme")
    model = chat_openai(fake, callbacks=[handler])
    with pytest.raises(CustomerBudgetExceededError) as denied:
        model.invoke("Hello")
    assert denied.value.details["customer_id"] == "acme"
    with pytest.raises(DeniedError):
        asyncio.run(model.ainvoke("Hello"))
    assert fake[1].state.requests == []


def test_a_scoped_client_scopes_the_handler(ns: NullSpend, fake: tuple[str, Any]) -> None:
    handler = NullSpendCallbackHandler(client=ns.customer("acme").scoped(tags={"team": "ml"}))
    chat_openai(fake, callbacks=[handler]).invoke("Hello")
    (event,) = settled_events(ns, 1)
    assert (event.customer, event.tags["team"]) == ("acme", "ml")


def test_ainvoke_and_astream(ns: NullSpend, fake: tuple[str, Any]) -> None:
    handler = NullSpendCallbackHandler(client=ns, session_id="s-7")
    model = chat_openai(fake, stream_usage=True, callbacks=[handler])

    async def run() -> None:
        await model.ainvoke("Hello")
        assert [c async for c in model.astream("Hello")]

    asyncio.run(run())
    events = settled_events(ns, 2)
    assert [e.cost_microdollars for e in events] == [COST, COST]
    assert {e.session_id for e in events} == {"s-7"}


def chat_anthropic(fake: tuple[str, Any], *, tool_call: str = "", **kwargs: Any) -> ChatAnthropic:
    return ChatAnthropic(
        model_name="claude-sonnet-4-5-20250929",
        base_url=fake[0],
        api_key="sk-ant-test",  # type: ignore[arg-type]
        max_retries=0,
        max_tokens_to_sample=200,
        default_headers=fake_headers(ANTHROPIC_USAGE, tool_call),
        timeout=None,
        stop=None,
        **kwargs,
    )


def test_chat_anthropic(ns: NullSpend, fake: tuple[str, Any]) -> None:
    model = chat_anthropic(fake, callbacks=[NullSpendCallbackHandler(client=ns)])
    model.invoke("Hello")
    (event,) = settled_events(ns, 1)
    assert event.cost_microdollars == ANTHROPIC_COST
    assert (event.cached_input_tokens, event.cache_write_5m_tokens) == (6000, 1500)


def test_anthropic_passes_billed_besides_the_answer_are_charged(fake: tuple[str, Any]) -> None:
    """Compaction and the advisor tool bill passes the answer's top-level usage leaves out
    (``usage.iterations``, which langchain-anthropic keeps in response_metadata): they were not
    charged, 84,000 µ$ recorded for an 821,500 µ$ bill (the docs' compaction example and an
    Opus advisor call). Now each is priced at its model."""
    usage = {"input": 23000, "cached": 0, "output": 1000, "reasoning": 0, "cache_write": 0}
    iterations = [
        {"type": "compaction", "input": 180000, "output": 3500},
        {"type": "advisor_message", "model": "claude-opus-4-8", "input": 21000, "output": 1600},
    ]
    bill = (23000 * 3 + 1000 * 15) + (180000 * 3 + 3500 * 15) + (21000 * 5 + 1600 * 25)
    engine = LocalNullSpend()
    model = chat_anthropic(fake, callbacks=[NullSpendCallbackHandler(client=engine)])
    model.default_headers = {**fake_headers(usage, ""), "x-fake-iterations": json.dumps(iterations)}
    model.invoke("Hello")
    (event,) = engine.cost_events().data
    assert event.cost_microdollars == bill
    assert (event.input_tokens, event.output_tokens) == (224000, 6100)


def test_anthropic_passes_besides_the_call_are_reserved(fake: tuple[str, Any]) -> None:
    """An advisor tool's calls and compaction are reserved as core reserves the request the
    model sent (the proxy's estimate of it): they were left out, so a Haiku call with two
    Opus advisor calls reserved less than a tenth of what it may bill."""
    engine = LocalNullSpend([LocalBudget.total(10**9)])
    reserved = reserved_estimates(engine)
    compacting = {
        "edits": [
            {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 50_000}}
        ]
    }
    model = chat_anthropic(
        fake,
        callbacks=[NullSpendCallbackHandler(client=engine)],
        context_management=compacting,
    )
    advisor = {"type": "advisor_20260301", "name": "advisor", "model": "claude-opus-4-8"}
    model.bind_tools([{**advisor, "max_uses": 2}]).invoke("Hello " * 60_000)
    sent = fake[1].state.requests[-1]["json"]
    assert sent["context_management"] == compacting
    core = estimate_request_body(sent, ANTHROPIC_MESSAGES).microdollars
    alone = estimate_request_body({**sent, "tools": [], "context_management": None}).microdollars
    assert core > 10 * alone
    assert core * 0.9 <= reserved[0] <= core * 1.1


def test_a_stream_reporting_no_input_is_charged_its_estimated_input(fake: tuple[str, Any]) -> None:
    """An Anthropic stream whose last event counts output only (the API before mid-2025, some
    gateways today): langchain-anthropic then reports zero input. Recorded with the input at
    the estimate, never as an output-only call."""
    engine = LocalNullSpend()
    model = chat_anthropic(fake, callbacks=[NullSpendCallbackHandler(client=engine)])
    model.default_headers = {**(model.default_headers or {}), "x-fake-fault": "output-only-delta"}
    with pytest.warns(UserWarning, match="no input tokens"):
        "".join(str(chunk.content) for chunk in model.stream("Hello"))
    (event,) = engine.cost_events().data
    assert event.output_tokens == 87
    assert event.input_tokens > 0
    assert event.cost_microdollars == event.input_tokens * 3 + 87 * 15


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


ADD_TWO_AND_THREE = json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}})


def test_a_langgraph_agent_round_trip(ns: NullSpend, fake: tuple[str, Any]) -> None:
    """A prebuilt ReAct agent asks for a tool, runs it, and answers: two model calls, each
    priced and attributed, both under one trace (the agent run's id)."""
    from langgraph.prebuilt import create_react_agent

    handler = NullSpendCallbackHandler(client=ns, customer="acme")
    model = chat_openai(fake, tool_call=ADD_TWO_AND_THREE)
    agent = create_react_agent(model, tools=[add])
    run_id = uuid.uuid4()
    result = agent.invoke(
        {"messages": [{"role": "user", "content": "What is 2 + 3?"}]},
        config={"callbacks": [handler], "run_id": run_id},
    )
    kinds = [type(m).__name__ for m in result["messages"]]
    assert kinds == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]
    assert result["messages"][2].content == "5"
    events = settled_events(ns, 2)
    assert [e.cost_microdollars for e in events] == [COST, COST]
    assert {(e.customer, e.trace_id) for e in events} == {("acme", run_id.hex)}


def test_a_streamed_async_agent_on_anthropic(fake: tuple[str, Any]) -> None:
    """The same round trip streamed (``astream`` in messages mode), tool call arguments
    arriving in pieces, on the embedded engine; the cap stops the third call."""
    from langgraph.prebuilt import create_react_agent

    engine = LocalNullSpend([LocalBudget.total(2 * ANTHROPIC_COST)])
    handler = NullSpendCallbackHandler(client=engine, session_id="chat-9")
    model = chat_anthropic(fake, tool_call=ADD_TWO_AND_THREE)
    agent = create_react_agent(model, tools=[add])
    question = {"messages": [{"role": "user", "content": "What is 2 + 3?"}]}

    async def run() -> list[str]:
        chunks = []
        async for chunk, _ in agent.astream(
            question, config={"callbacks": [handler]}, stream_mode="messages"
        ):
            chunks.append(type(chunk).__name__)
        return chunks

    chunks = asyncio.run(run())
    assert {"AIMessageChunk", "ToolMessage"} <= set(chunks)
    events = engine.cost_events().data
    assert [e.cost_microdollars for e in events] == [ANTHROPIC_COST] * 2
    assert {e.session_id for e in events} == {"chat-9"}
    requests = len(fake[1].state.requests)
    with pytest.raises(DeniedError):
        asyncio.run(run())
    assert len(fake[1].state.requests) == requests  # refused before the provider was called
    assert [b.reserved_microdollars for b in engine.budget_status()] == [0]


def test_a_batch_denied_part_way_holds_nothing(fake: tuple[str, Any]) -> None:
    """``generate`` starts every prompt before calling the model: when the second is denied,
    the first's reservation is given back (nothing was sent), sync and async."""
    from langchain_core.messages import HumanMessage

    engine = LocalNullSpend([LocalBudget.total(1_000)])  # one estimate (605 µ$), not two
    model = chat_openai(fake, max_tokens=1_000, callbacks=[NullSpendCallbackHandler(client=engine)])
    prompts = [[HumanMessage("first")], [HumanMessage("second")]]
    with pytest.raises(DeniedError):
        model.generate(prompts)
    with pytest.raises(DeniedError):
        asyncio.run(model.agenerate(prompts))
    assert fake[1].state.requests == []
    assert [b.reserved_microdollars for b in engine.budget_status()] == [0]
    model.invoke("alone")  # the budget is whole again
    assert len(fake[1].state.requests) == 1


def test_an_async_batch_denied_while_a_sibling_is_still_reserving_holds_nothing(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    """Server mode, agenerate: the prompts' starts run at once in executor threads. Here the
    admitted one hears its answer late (held 300 ms), after the other was denied and had
    released the siblings it could see: on arriving it sees the denial and releases too."""
    from langchain_core.messages import HumanMessage

    with server.client() as admin:
        budget = {"entityType": "user", "limitMicrodollars": 1_000}  # one estimate, not two
        admin.post("/api/budgets", json=budget).raise_for_status()

    async def admitted_late(request: Request, real: Response) -> Response:
        if request.url.path == "/api/reservations" and real.status_code == 201:
            await asyncio.sleep(0.3)
        return real

    with (
        interposed(server.base_url, admitted_late) as base_url,
        NullSpend(server.admin_key, base_url) as ns,
    ):
        model = chat_openai(fake, max_tokens=1_000, callbacks=[NullSpendCallbackHandler(client=ns)])
        with pytest.raises(DeniedError):
            asyncio.run(model.agenerate([[HumanMessage("first")], [HumanMessage("second")]]))
        deadline = time.monotonic() + 5
        while ns.budget_status()[0].reserved_microdollars:  # the late one is released
            assert time.monotonic() < deadline, "a reservation was left to expire"
            time.sleep(0.05)
    assert fake[1].state.requests == []


def test_the_answer_does_not_wait_for_the_settle(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    """Server mode: the call returns as soon as the provider answered; the settle follows from
    the client's background thread (held here until the call has returned), and a read on the
    client waits for it."""
    held = HeldSettles()
    with (
        interposed(server.base_url, held) as base_url,
        NullSpend(server.admin_key, base_url) as ns,
    ):
        chat_openai(fake, callbacks=[NullSpendCallbackHandler(client=ns)]).invoke("Hello")
        held.order.append("invoke returned")
        held.may_go.set()
        (event,) = ns.cost_events().data
    assert held.order == ["invoke returned", "settle answered"]
    assert event.cost_microdollars == COST


def test_a_plain_llm_is_metered_too() -> None:
    """on_llm_start (text LLMs, not chat models): reserved, recorded (at the estimate when the
    LLM reports no usage), and denied before it runs."""
    from langchain_core.language_models.fake import FakeListLLM

    from nullspend.embedded import LocalBudget, LocalNullSpend

    engine = LocalNullSpend([LocalBudget.total(10**9)])
    handler = NullSpendCallbackHandler(client=engine)
    llm = FakeListLLM(responses=["fine"], callbacks=[handler])
    assert llm.invoke("How are you?") == "fine"
    (event,) = engine.cost_events().data
    assert event.cost_microdollars > 0  # an unpriced model's estimate, never zero
    denied = NullSpendCallbackHandler(client=LocalNullSpend([LocalBudget.total(0)]))
    with pytest.raises(DeniedError):
        FakeListLLM(responses=["fine"], callbacks=[denied]).invoke("How are you?")


class BatchUsageLLM(BaseLLM):
    """A plain LLM that reports one token_usage for a whole batch, as OpenAI's completions
    LLM does: 100 input and 10 output tokens a prompt, of gpt-4o-mini; in async code after a
    pause, as a provider's answer takes."""

    @property
    def _llm_type(self) -> str:
        return "batch-usage"

    def _generate(self, prompts: list[str], *args: Any, **kwargs: Any) -> LLMResult:
        usage = {"prompt_tokens": 100 * len(prompts), "completion_tokens": 10 * len(prompts)}
        return LLMResult(
            generations=[[Generation(text="fine")] for _ in prompts],
            llm_output={"token_usage": usage, "model_name": "gpt-4o-mini"},
        )

    async def _agenerate(self, prompts: list[str], *args: Any, **kwargs: Any) -> LLMResult:
        await asyncio.sleep(0.05)
        return self._generate(prompts)


ONE_PROMPT = 100 * 15 // 100 + 10 * 60 // 100  # gpt-4o-mini: $0.15 input, $0.60 output per M


def test_a_plain_llm_batch_is_charged_its_usage_once() -> None:
    """A plain LLM answers a batch with one token_usage for all of it; LangChain hands it to
    the first prompt's run and an empty one to the others. Recorded: the batch's exact cost,
    once, not that plus an estimate for every other prompt."""
    engine = LocalNullSpend()
    BatchUsageLLM(callbacks=[NullSpendCallbackHandler(client=engine)]).generate(["a", "b", "c"])
    events = engine.cost_events().data
    assert sorted(e.cost_microdollars for e in events) == [0, 0, 3 * ONE_PROMPT]
    assert sum(e.input_tokens for e in events) == 300


def test_an_async_plain_llm_call_is_charged_its_usage() -> None:
    """``BaseLLM.agenerate`` starts each prompt in a task of its own that ends at once: taken
    for the call's task, its end released the call while the request was in flight, so async
    plain LLMs were recorded at nothing and held to no cap."""
    engine = LocalNullSpend()
    llm = BatchUsageLLM(callbacks=[NullSpendCallbackHandler(client=engine)])

    async def calls() -> None:
        await llm.ainvoke("a")
        await llm.abatch(["b", "c"])  # both prompts at once: the first charged for both

    asyncio.run(calls())
    costs = sorted(e.cost_microdollars for e in engine.cost_events().data)
    assert costs == [0, ONE_PROMPT, 2 * ONE_PROMPT]


def test_a_stream_stopped_early_is_charged_not_released(fake: tuple[str, Any]) -> None:
    from nullspend.embedded import LocalNullSpend

    engine = LocalNullSpend()
    model = chat_openai(fake, callbacks=[NullSpendCallbackHandler(client=engine)])
    for _ in model.stream("Hi"):
        break
    (event,) = engine.cost_events().data
    assert event.cost_microdollars > 0
    assert engine.budget_status() == []


def test_session_from_metadata_and_latency(ns: NullSpend, fake: tuple[str, Any]) -> None:
    handler = NullSpendCallbackHandler(client=ns)
    chat_openai(fake).invoke(
        "Hello", config={"callbacks": [handler], "metadata": {"nullspend_session": "chat-42"}}
    )
    (event,) = settled_events(ns, 1)
    assert event.session_id == "chat-42"
    assert event.duration_ms is not None
    assert event.duration_ms >= 0


def test_usage_metadata_is_normalised() -> None:
    """LangChain's totals (cache and audio inside input, reasoning and audio inside output)
    split into the parts NullSpend prices apart."""
    from nullspend_langchain.usage import reading_from_metadata

    usage = reading_from_metadata(
        {
            "input_tokens": 10_000,
            "output_tokens": 900,
            "total_tokens": 10_900,
            "input_token_details": {
                "cache_read": 6_000,
                "cache_creation": 1_500,
                "ephemeral_1h_input_tokens": 500,
                "audio": 100,
            },
            "output_token_details": {"reasoning": 400, "audio": 50},
        }
    ).usage
    assert usage.as_dict() == {  # type: ignore[union-attr]
        "input_tokens": 2_400,
        "cache_read_tokens": 6_000,
        "cache_write_5m_tokens": 1_000,
        "cache_write_1h_tokens": 500,
        "output_tokens": 850,
        "reasoning_tokens": 400,
        "audio_input_tokens": 100,
        "audio_output_tokens": 50,
        "web_search_requests": 0,
    }


@pytest.mark.parametrize(
    "details",
    [
        {},
        {"input_token_details": {}, "output_token_details": {}},
        {
            "input_token_details": {"audio": 0, "cache_read": 0},
            "output_token_details": {"audio": 0, "reasoning": 0},
        },
    ],
)
def test_usage_metadata_without_parts_is_all_plain_input_and_output(
    details: dict[str, Any],
) -> None:
    """The common case (OpenAI reports its details as zeros): the totals as they are."""
    from nullspend_langchain.usage import reading_from_metadata

    usage = reading_from_metadata({"input_tokens": 9, "output_tokens": 3, **details}).usage
    assert usage == Usage(input_tokens=9, output_tokens=3)


def test_configured_from_the_environment(
    server: RunningServer, fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``NullSpendCallbackHandler()`` with no arguments: the server named by
    ``NULLSPEND_API_KEY`` and ``NULLSPEND_BASE_URL``; with neither, the in-process engine."""
    monkeypatch.delenv("NULLSPEND_API_KEY", raising=False)
    monkeypatch.delenv("NULLSPEND_BASE_URL", raising=False)
    assert isinstance(NullSpendCallbackHandler().client, LocalNullSpend)
    monkeypatch.setenv("NULLSPEND_API_KEY", server.admin_key)
    monkeypatch.setenv("NULLSPEND_BASE_URL", server.base_url)
    handler = NullSpendCallbackHandler(customer="acme")
    assert isinstance(handler.client, NullSpend)
    chat_openai(fake).invoke("Hello", config={"callbacks": [handler]})
    (event,) = settled_events(handler.client, 1)
    assert (event.customer, event.cost_microdollars) == ("acme", COST)


def test_reasoning_tokens_are_recorded_and_priced_as_output(fake: tuple[str, Any]) -> None:
    """A reasoning model through the real ChatOpenAI: the reasoning part of the output is
    recorded apart, and priced at the output rate (it is part of output_tokens)."""
    usage = {"input": 100, "cached": 0, "output": 500, "reasoning": 400, "cache_write": 0}
    engine = LocalNullSpend()
    model = ChatOpenAI(
        model="o4-mini",
        base_url=f"{fake[0]}/v1",
        api_key="sk-test",  # type: ignore[arg-type]
        max_retries=0,
        default_headers={"x-fake-usage": json.dumps(usage)},
    )
    model.invoke("Think", config={"callbacks": [NullSpendCallbackHandler(client=engine)]})
    (event,) = engine.cost_events().data
    assert (event.input_tokens, event.output_tokens, event.reasoning_tokens) == (100, 500, 400)
    # o4-mini: $1.10 input, $4.40 output per million tokens
    assert event.cost_microdollars == round(100 * 1.1 + 500 * 4.4)


def test_a_run_tag_never_replaces_the_handlers_tag(fake: tuple[str, Any]) -> None:
    """A run tagged ``team`` must not turn the handler's ``team=ml`` into ``team=true`` and so
    slip out of the ml team's budget."""
    engine = LocalNullSpend([LocalBudget.tag("team", "ml", 1)])
    model = chat_openai(
        fake, callbacks=[NullSpendCallbackHandler(client=engine, tags={"team": "ml"})]
    )
    with pytest.raises(DeniedError):
        model.invoke("Hello", config={"tags": ["team", "other"]})
    assert fake[1].state.requests == []


def reserved_for(model: Any, fake: tuple[str, Any], prompt: Any = "Hello") -> int:
    """The estimate the handler reserves for one ``invoke`` of ``model``."""
    engine = LocalNullSpend()
    reserved = reserved_estimates(engine)
    model.invoke(prompt, config={"callbacks": [NullSpendCallbackHandler(client=engine)]})
    (estimate,) = reserved
    return estimate


def test_tool_schemas_and_choices_are_in_the_estimate(fake: tuple[str, Any]) -> None:
    """The provider bills tool schemas as input and every one of ``n`` completions as output:
    an estimate that leaves them out lets concurrent calls spend past a hard cap."""
    gpt = default_catalog().resolve("gpt-4o-mini")
    assert gpt is not None

    @tool
    def lookup(query: str, region: str, limit: int) -> str:
        """Look a customer record up by free text, within one sales region, at most limit rows."""
        return query

    tools = [lookup] * 20
    schemas = json.dumps(chat_openai(fake).bind_tools(tools).kwargs["tools"])  # type: ignore[attr-defined]
    plain = reserved_for(chat_openai(fake, max_tokens=100), fake)
    with_tools = reserved_for(chat_openai(fake, max_tokens=100).bind_tools(tools), fake)
    # At least the schemas at prose's 4 bytes a token, at the input price.
    at_least = len(schemas) // 4 * gpt.prices.input // PICODOLLARS_PER_MICRODOLLAR
    assert with_tools - plain >= at_least > 0
    three = reserved_for(chat_openai(fake, max_tokens=100, n=3), fake)
    two_more = 2 * 100 * gpt.prices.output // PICODOLLARS_PER_MICRODOLLAR
    assert three - plain >= two_more > 0


def test_a_request_for_speech_is_estimated_at_the_audio_output_rate(
    fake: tuple[str, Any],
) -> None:
    """A chat model asked for speech may bill its whole output as audio, at eight times the
    text rate on gpt-4o-audio-preview: estimated at the text rate, a hard cap was passed."""
    audio = default_catalog().resolve("gpt-4o-audio-preview")
    assert audio is not None
    assert audio.prices.audio_output is not None
    speech = {"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}
    model = chat_openai(fake, model="gpt-4o-audio-preview", max_tokens=1_000, **speech)
    at_least = 1_000 * audio.prices.audio_output // PICODOLLARS_PER_MICRODOLLAR
    assert reserved_for(model, fake) >= at_least > 0


def test_an_answer_from_langchains_cache_costs_nothing(fake: tuple[str, Any]) -> None:
    from langchain_core.caches import InMemoryCache

    engine = LocalNullSpend([LocalBudget.total(10**6)])
    model = chat_openai(
        fake, cache=InMemoryCache(), callbacks=[NullSpendCallbackHandler(client=engine)]
    )
    for _ in range(3):
        model.invoke("Hello")
    assert len(fake[1].state.requests) == 1
    assert [e.cost_microdollars for e in engine.cost_events().data] == [COST]
    (status,) = engine.budget_status()
    assert (status.spend_microdollars, status.reserved_microdollars) == (COST, 0)


@pytest.mark.parametrize(
    ("fault", "refusal"),
    [
        ("finish:length", openai.LengthFinishReasonError),
        ("finish:content_filter", openai.ContentFilterFinishReasonError),
    ],
)
def test_a_structured_answer_refused_after_it_came_is_charged_its_usage(
    fake: tuple[str, Any], fault: str, refusal: type[Exception]
) -> None:
    """The openai SDK refuses a parsed answer cut off at max_tokens, or stopped by the content
    filter, after the provider billed it: the error carries the answer (the first in its
    ``completion``, the other as the HTTP answer langchain-openai attaches), and its usage is
    charged."""
    from pydantic import BaseModel

    class Answer(BaseModel):
        text: str

    engine = LocalNullSpend([LocalBudget.total(10**6)])
    refused = chat_openai(fake, fault=fault, callbacks=[NullSpendCallbackHandler(client=engine)])
    with pytest.raises(refusal):
        refused.with_structured_output(Answer, method="json_schema").invoke("Answer in JSON")
    assert len(fake[1].state.requests) == 1
    assert [e.cost_microdollars for e in engine.cost_events().data] == [COST]
    (status,) = engine.budget_status()
    assert status.reserved_microdollars == 0
    # An answer whose usage cannot be read (a server's negative count) raised the wire's
    # ValueError out of the handler in place of the SDK's refusal, and its reservation (9,839
    # µ$) was held: the refusal is raised, and the call charged its estimate.
    unreadable = {**USAGE, "cached": -1}
    reserved = reserved_estimates(engine)
    odd = chat_openai(fake, fault=fault, usage=unreadable, callbacks=refused.callbacks)
    with pytest.raises(refusal):
        odd.with_structured_output(Answer, method="json_schema").invoke("Answer in JSON")
    assert [e.cost_microdollars for e in engine.cost_events().data] == [*reserved, COST]
    (status,) = engine.budget_status()
    assert status.reserved_microdollars == 0


def test_an_answer_refused_after_it_came_without_usage_is_charged_its_estimate() -> None:
    """An answer the openai SDK refused after it came (cut off at max_tokens) that carried no
    usage (a gateway that strips it) was released, though the provider billed it."""
    completion = openai.types.chat.ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "length",
                    "message": {"role": "assistant", "content": '{"text": "cut'},
                }
            ],
        }
    )
    reading = handler_module._answer_in(openai.LengthFinishReasonError(completion=completion))
    assert reading is not None
    assert (reading.usage, reading.model) == (None, "gpt-4o-mini")


def test_a_batch_whose_reservation_fails_part_way_holds_nothing(
    fake: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a denial this time: the server did not answer the second prompt's reservation. The
    first prompt's is given back (LangChain ends none of them: nothing was sent)."""
    from langchain_core.messages import HumanMessage

    engine = LocalNullSpend([LocalBudget.total(10**6)])
    reserve_id = engine.reserve_id
    calls = iter(range(10))

    def unreachable_second(estimate: int | None = None, **options: Any) -> str:
        if next(calls) == 1:
            raise ConnectionFailedError("could not reach the NullSpend server")
        return reserve_id(estimate, **options)

    monkeypatch.setattr(engine, "reserve_id", unreachable_second)
    model = chat_openai(fake, callbacks=[NullSpendCallbackHandler(client=engine)])
    with pytest.raises(ConnectionFailedError):
        model.generate([[HumanMessage("first")], [HumanMessage("second")]])
    assert fake[1].state.requests == []
    assert [b.reserved_microdollars for b in engine.budget_status()] == [0]


def test_a_call_inside_a_retriever_shares_the_runs_trace(fake: tuple[str, Any]) -> None:
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableLambda

    model = chat_openai(fake)

    class Rewriting(BaseRetriever):
        """Query rewriting, as MultiQueryRetriever does: a model call inside the retriever."""

        def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
            rewritten = model.invoke(query, config={"callbacks": run_manager.get_child()})
            return [Document(page_content=str(rewritten.content))]

    chain = Rewriting() | RunnableLambda(lambda docs: docs[0].page_content) | model
    engine = LocalNullSpend()
    root = uuid.uuid4()
    handler = NullSpendCallbackHandler(client=engine)
    chain.invoke("what is x", config={"callbacks": [handler], "run_id": root})
    assert [e.trace_id for e in engine.cost_events().data] == [root.hex] * 2


def test_a_turn_continuing_a_stored_conversation_is_held_to_the_cap(fake: tuple[str, Any]) -> None:
    """A Responses turn given ``previous_response_id`` (as ChatOpenAI's docs pass it) is billed
    for the stored earlier turns, which its messages leave out: it is estimated at the model's
    context window, so a cap smaller than that refuses it before the request is sent."""
    engine = LocalNullSpend([LocalBudget.total(5_000)])
    model = chat_openai(
        fake,
        use_responses_api=True,
        max_tokens=100,
        callbacks=[NullSpendCallbackHandler(client=engine)],
    )
    model.invoke("Hello")
    with pytest.raises(DeniedError):
        model.invoke("And then?", previous_response_id="resp_earlier")
    assert len(fake[1].state.requests) == 1
    (status,) = engine.budget_status()
    assert status.reserved_microdollars == 0


async def _until(condition: Any, seconds: float = 5.0) -> None:
    """Wait on the event loop for ``condition()`` (work it schedules, such as an async
    generator's close, runs meanwhile)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def stop_an_agent_stream_early(fake: tuple[str, Any], client: NullSpend | LocalNullSpend) -> None:
    """Stream a LangGraph agent and stop after its first chunk, the loop still running; return
    once nothing is reserved any more."""
    from langgraph.prebuilt import create_react_agent

    handler = NullSpendCallbackHandler(client=client)
    agent = create_react_agent(chat_openai(fake), tools=[add])
    question = {"messages": [{"role": "user", "content": "What is 2 + 3?"}]}

    def reserved() -> int:
        return client.budget_status()[0].reserved_microdollars

    async def stop_after_first_chunk() -> None:
        async for _ in agent.astream(
            question, config={"callbacks": [handler]}, stream_mode="messages"
        ):
            break
        assert reserved() > 0  # the model call is still open here
        await _until(lambda: reserved() == 0)

    asyncio.run(stop_after_first_chunk())


def test_each_messages_framing_is_in_the_estimate(fake: tuple[str, Any]) -> None:
    """A callback sees the messages' text, but the provider bills each message's role and
    framing too (OpenAI: 3 tokens a message, 1 for the role, 3 to prime the reply). Left out, a
    one-word prompt was reserved below its cost, and 80 concurrent calls on a server spent
    3,038 µ$ against a 3,000 µ$ cap."""

    def billed(input_tokens: int) -> int:
        usage = Usage(input_tokens=input_tokens, output_tokens=5)
        return -(-cost(usage, "gpt-4o-mini").total_picodollars // PICODOLLARS_PER_MICRODOLLAR)

    one_word = reserved_for(chat_openai(fake, max_tokens=5), fake, "Hello")
    assert one_word >= billed(3 + 1 + 1 + 3)
    history = [("human" if n % 2 == 0 else "ai", "ok") for n in range(20)]
    assert reserved_for(chat_openai(fake, max_tokens=5), fake, history) >= billed(20 * 5 + 3)


def test_the_prompt_anthropic_adds_for_tools_is_in_the_estimate(fake: tuple[str, Any]) -> None:
    """Anthropic bills a system prompt of its own (346 tokens on current models) on every call
    that sends tools, and its bash tool's definition (245 tokens) in place of the short spec
    the call sends: none of it is in the messages or the schemas."""

    @tool
    def lookup(query: str) -> str:
        """Look a record up."""
        return query

    claude = default_catalog().resolve("claude-sonnet-4-5")
    assert claude is not None
    plain = reserved_for(chat_anthropic(fake, max_tokens=5), fake)
    with_tool = reserved_for(chat_anthropic(fake, max_tokens=5).bind_tools([lookup]), fake)
    assert with_tool - plain >= 346 * claude.prices.input // PICODOLLARS_PER_MICRODOLLAR
    bash = {"type": "bash_20250124", "name": "bash"}
    with_bash = reserved_for(chat_anthropic(fake, max_tokens=5).bind_tools([bash]), fake)
    assert with_bash - plain >= (346 + 245) * claude.prices.input // PICODOLLARS_PER_MICRODOLLAR
    # Claude adds it wherever it is served: here through an OpenAI-compatible endpoint.
    compatible = ChatOpenAI(
        model="claude-sonnet-4-5",
        base_url=f"{fake[0]}/v1",
        api_key="sk-test",  # type: ignore[arg-type]
        max_tokens=5,  # type: ignore[call-arg]
    )
    through_openai = reserved_for(compatible, fake)
    through_openai_with_tool = reserved_for(compatible.bind_tools([lookup]), fake)
    added = through_openai_with_tool - through_openai
    assert added >= 346 * claude.prices.input // PICODOLLARS_PER_MICRODOLLAR


def test_a_langgraph_stream_stopped_early_holds_nothing(fake: tuple[str, Any]) -> None:
    """A chat UI stops an agent's stream (the client went away): LangGraph cancels the node,
    and LangChain ends the model call with neither ``on_llm_end`` nor ``on_llm_error``. The
    handler ends the calls of a cancelled task: a stream that had started is charged its
    estimate (tokens were spent), and nothing stays reserved against the cap for an hour."""
    engine = LocalNullSpend([LocalBudget.total(10**6)])
    stop_an_agent_stream_early(fake, engine)
    (event,) = engine.cost_events().data
    (status,) = engine.budget_status()
    assert event.cost_microdollars > COST  # the estimate: no usage came
    assert (status.spend_microdollars, status.reserved_microdollars) == (event.cost_microdollars, 0)


def test_a_langgraph_stream_stopped_early_holds_nothing_on_a_server(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    """The same against a server: the handler runs in executor threads there, outside the
    task, and ends the calls of a run cancelled around them (the node's chain run)."""
    with NullSpend(server.admin_key, server.base_url) as ns:
        budget(
            server, entityType="api_key", entityId=ns.introspect().key_id, limitMicrodollars=10**9
        )
        stop_an_agent_stream_early(fake, ns)
        (event,) = settled_events(ns, 1)
        assert event.cost_microdollars > COST


def test_a_cancelled_ainvoke_is_charged_its_estimate(fake: tuple[str, Any]) -> None:
    """An ``ainvoke`` cancelled while it waits for the provider (a timeout around it, a
    stopped agent) is left by LangChain with neither end nor error: its task's cancellation
    ends it. Its request went out and may have been answered and billed (the provider goes on
    without the client), so it is charged its estimate, as the proxy charges a call its client
    left; it was released, and a LangGraph run whose denied branch cancelled the others let 20
    answered requests go unrecorded under a 283 µ$ cap."""
    engine = LocalNullSpend([LocalBudget.total(10**6)])
    model = chat_openai(fake, fault="hang", callbacks=[NullSpendCallbackHandler(client=engine)])

    async def cancel_while_waiting() -> None:
        call = asyncio.create_task(model.ainvoke("Hello"))
        await _until(lambda: len(fake[1].state.requests) == 1)
        assert engine.budget_status()[0].reserved_microdollars > 0
        estimate = engine.budget_status()[0].reserved_microdollars
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await _until(lambda: engine.budget_status()[0].reserved_microdollars == 0)
        assert [e.cost_microdollars for e in engine.cost_events().data] == [estimate]

    asyncio.run(cancel_while_waiting())


def test_a_call_that_failed_after_its_request_went_out_is_charged_its_estimate(
    fake: tuple[str, Any],
) -> None:
    """A call whose request was sent but whose answer never came (the model's ``timeout``, an
    ``astream`` cancelled before its first chunk) was released: three timed-out ``invoke`` calls
    reached the provider, which bills them, and recorded nothing, while the tracked clients
    and a cancelled ``ainvoke`` charge such a call its estimate. It is charged its estimate
    now; a call the provider refused, or never received, is still released."""
    engine = LocalNullSpend([LocalBudget.total(10**9)])
    reserved = reserved_estimates(engine)
    handler = NullSpendCallbackHandler(client=engine)
    timing_out = chat_openai(fake, fault="hang", timeout=0.3, callbacks=[handler])
    for _ in range(3):
        with pytest.raises(openai.APITimeoutError):
            timing_out.invoke("Hello")
    assert len(fake[1].state.requests) == 3
    assert [e.cost_microdollars for e in engine.cost_events().data] == reserved

    async def cancel_before_the_first_chunk() -> None:
        async def read() -> None:
            async for _ in chat_openai(fake, fault="hang", callbacks=[handler]).astream("Hi"):
                pass

        reading = asyncio.create_task(read())
        await _until(lambda: len(fake[1].state.requests) == 4)
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading

    asyncio.run(cancel_before_the_first_chunk())
    assert len(engine.cost_events().data) == len(reserved) == 4
    refused = chat_openai(fake, fault="status:500", callbacks=[handler])
    with pytest.raises(openai.InternalServerError):
        refused.invoke("Hello")
    unreachable = chat_openai(fake, base="http://127.0.0.1:9", callbacks=[handler])
    with pytest.raises(openai.APIConnectionError):
        unreachable.invoke("Hello")
    (status,) = engine.budget_status()
    assert len(reserved) == 6
    assert (status.spend_microdollars, status.reserved_microdollars) == (sum(reserved[:4]), 0)
    assert len(engine.cost_events().data) == 4


def test_a_chain_stream_closed_after_its_usage_is_charged_its_usage(
    fake: tuple[str, Any],
) -> None:
    """Closing a chain's stream closes the chain's run first (``GeneratorExit``), then the
    model's stream, which reports the usage it had received: the call is charged that, not
    ended at its estimate when the chain's run closed."""
    from langchain_core.prompts import ChatPromptTemplate

    engine = LocalNullSpend()
    prompt = ChatPromptTemplate.from_messages([("user", "{question}")])
    chain = prompt | chat_openai(fake, stream_usage=True)
    config: Any = {"callbacks": [NullSpendCallbackHandler(client=engine)]}

    async def close_once_usage_came() -> None:
        stream = chain.astream({"question": "Hello"}, config=config)
        async for chunk in stream:
            if chunk.usage_metadata:
                break
        await stream.aclose()

    asyncio.run(close_once_usage_came())
    assert [e.cost_microdollars for e in engine.cost_events().data] == [COST]


def test_the_tool_calls_in_the_history_are_in_the_estimate(fake: tuple[str, Any]) -> None:
    """An agent's history holds its earlier tool calls. ChatOpenAI keeps their arguments out of
    the message's content (empty), in ``tool_calls``; the provider bills them as input: left
    out, 40 file writes (59 KB) were estimated as a few tokens, past a strict cap."""
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    body = "def handler(event):\n    return event\n" * 40
    history: list[Any] = [HumanMessage("Write the files")]
    for n in range(40):
        call = {"name": "write_file", "args": {"path": f"f{n}.py", "text": body}, "id": f"c{n}"}
        history += [AIMessage("", tool_calls=[call]), ToolMessage("ok", tool_call_id=f"c{n}")]
    gpt = default_catalog().resolve("gpt-4o-mini")
    assert gpt is not None
    plain = reserved_for(chat_openai(fake, max_tokens=100), fake, history[:1])
    with_calls = reserved_for(chat_openai(fake, max_tokens=100), fake, history)
    arguments = sum(len(json.dumps(m.tool_calls)) for m in history if isinstance(m, AIMessage))
    at_least = arguments // 4 * gpt.prices.input // PICODOLLARS_PER_MICRODOLLAR
    assert with_calls - plain >= at_least > 0


ONE_HOUR_CACHED = [
    {
        "type": "text",
        "text": "a long manual " * 1000,
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
    }
]


def test_a_one_hour_cache_write_is_priced_and_estimated_as_one(fake: tuple[str, Any]) -> None:
    """A prompt written to Anthropic's cache for an hour is billed at twice the input price.
    A stream's usage, as langchain-anthropic builds it from the last event, does not split the
    write by lifetime: it is priced at the lifetime the call asked for, as the answer's own
    usage prices it. The estimate prices the prompt as such a write too."""
    from langchain_core.messages import HumanMessage, SystemMessage

    usage = {
        "input": 20,
        "cached": 0,
        "output": 87,
        "cache_write": 50_000,
        "cache_write_1h": 50_000,
    }
    # Claude Sonnet 4.5: $3 input, $6 cache write (1 h), $15 output per M
    cost = 20 * 3 + 50_000 * 6 + 87 * 15
    prompt = [SystemMessage(ONE_HOUR_CACHED), HumanMessage("Hello")]
    recorded = []
    for streamed in (False, True):
        engine = LocalNullSpend()
        model = chat_anthropic(fake, callbacks=[NullSpendCallbackHandler(client=engine)])
        model.default_headers = {"x-fake-usage": json.dumps(usage)}
        list(model.stream(prompt)) if streamed else model.invoke(prompt)
        (event,) = engine.cost_events().data
        recorded.append((event.cost_microdollars, event.cache_write_1h_tokens))
    assert recorded == [(cost, 50_000)] * 2
    claude = default_catalog().resolve("claude-sonnet-4-5")
    assert claude is not None
    assert claude.prices.cache_write_1h > claude.prices.input
    cached = reserved_for(chat_anthropic(fake), fake, prompt)
    plain = reserved_for(chat_anthropic(fake), fake, [SystemMessage(ONE_HOUR_CACHED[0]["text"])])
    text_tokens = len(ONE_HOUR_CACHED[0]["text"]) // 4
    above_input = claude.prices.cache_write_1h - claude.prices.input
    assert cached - plain >= text_tokens * above_input // PICODOLLARS_PER_MICRODOLLAR > 0


def test_caching_asked_for_in_model_kwargs_is_priced_and_estimated(fake: tuple[str, Any]) -> None:
    """``model_kwargs={"cache_control": ...}`` goes out as the request's own field, but
    ChatAnthropic's invocation params keep it apart: a stream's one-hour writes were priced at
    the five-minute rate (8,790 µ$ for a 12,165 µ$ call) and the estimate left the write out."""
    usage = {**ANTHROPIC_USAGE, "cache_write_1h": ANTHROPIC_USAGE["cache_write"]}
    cost = 20 * 3 + 6000 * 0.3 + 1500 * 6 + 87 * 15  # a one-hour write: $6 per M
    one_hour = {"model_kwargs": {"cache_control": {"type": "ephemeral", "ttl": "1h"}}}
    engine = LocalNullSpend()
    model = chat_anthropic(fake, callbacks=[NullSpendCallbackHandler(client=engine)], **one_hour)
    model.default_headers = {"x-fake-usage": json.dumps(usage)}
    list(model.stream("Hello"))
    assert fake[1].state.requests[-1]["json"]["cache_control"]["ttl"] == "1h"
    (event,) = engine.cost_events().data
    assert (event.cost_microdollars, event.cache_write_1h_tokens) == (cost, 1500)
    long_prompt = "a long manual " * 1000
    cached = reserved_for(chat_anthropic(fake, **one_hour), fake, long_prompt)
    plain = reserved_for(chat_anthropic(fake), fake, long_prompt)
    assert cached > plain


def test_web_searches_are_charged(fake: tuple[str, Any]) -> None:
    """Anthropic's server-side web search is billed per search on top of the tokens. The
    answer's usage counts them; a stream's usage as langchain-anthropic reports it does not, so
    there they are counted from the answer's search blocks."""
    from nullspend.pricing import cost as priced

    usage = {**ANTHROPIC_USAGE, "web_searches": 3}
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    expected = priced(
        Usage(
            input_tokens=20,
            cache_read_tokens=6000,
            cache_write_5m_tokens=1500,
            output_tokens=87,
            web_search_requests=3,
        ),
        "claude-sonnet-4-5",
    ).total_microdollars
    assert expected > ANTHROPIC_COST

    def searching(engine: LocalNullSpend) -> Any:
        model = chat_anthropic(fake, callbacks=[NullSpendCallbackHandler(client=engine)])
        model.default_headers = {"x-fake-usage": json.dumps(usage)}
        return model.bind_tools([search])

    assert searched_both_ways(searching) == [(expected, 3)] * 2

    def searching_in_v1(engine: LocalNullSpend) -> Any:
        """LangChain 1.x's content blocks (``output_version="v1"``): the searches are
        ``server_tool_call`` blocks, streamed or not."""
        model = chat_anthropic(
            fake, callbacks=[NullSpendCallbackHandler(client=engine)], output_version="v1"
        )
        model.default_headers = {"x-fake-usage": json.dumps(usage)}
        return model.bind_tools([search])

    assert searched_both_ways(searching_in_v1) == [(expected, 3)] * 2
    # Reserved: the five searches the tool allows, at $0.01 each, on top of the tokens.
    searching_estimate = reserved_for(chat_anthropic(fake).bind_tools([search]), fake)
    assert searching_estimate - reserved_for(chat_anthropic(fake), fake) >= 5 * 10_000


def searched_both_ways(searching: Any) -> list[tuple[int, int]]:
    """The cost and web searches recorded for one question asked of ``searching(engine)``'s
    model, invoked and then streamed, each on an engine of its own."""
    recorded = []
    for streamed in (False, True):
        engine = LocalNullSpend()
        model = searching(engine)
        list(model.stream("News today?")) if streamed else model.invoke("News today?")
        (event,) = engine.cost_events().data
        recorded.append((event.cost_microdollars, event.web_search_requests))
    return recorded


class FannedOut(TypedDict):
    out: Annotated[list[str], operator.add]


def test_a_graph_branch_denied_while_others_wait_leaves_them_charged(
    fake: tuple[str, Any],
) -> None:
    """LangGraph cancels a fan-out's other branches when one fails, a denial included: their
    calls, sent and answered, were released, so five runs of one graph under a cap that fits
    four calls sent 20 requests and recorded none. They are now charged their estimates, and
    the cap stops the runs after."""
    from langgraph.graph import START, StateGraph
    from langgraph.types import Send

    async def late(request: Request, real: Response) -> Response:
        await asyncio.sleep(0.5)  # answered (and billed); the client hears it later
        return real

    with interposed(fake[0], late) as base:
        model = chat_openai(fake, base=base, max_tokens=100)

        async def work(state: dict[str, Any]) -> dict[str, list[str]]:
            if state["last"]:  # calls once the others' requests are out (none are, once denied)
                await _until(lambda: len(fake[1].state.requests) - sent_before >= 4)
            return {"out": [str((await model.ainvoke("hello")).content)]}

        graph = StateGraph(FannedOut)
        graph.add_node("work", work)
        fan_out = [Send("work", {"last": i == 4}) for i in range(5)]
        graph.add_conditional_edges(START, lambda _: fan_out, ["work"])
        compiled = graph.compile()
        estimate = reserved_for(model, fake)
        engine = LocalNullSpend([LocalBudget.total(4 * estimate + estimate // 2)])
        config: Any = {"callbacks": [NullSpendCallbackHandler(client=engine)]}
        sent_before = len(fake[1].state.requests)

        async def five_runs() -> None:
            for _ in range(5):
                with pytest.raises(DeniedError):
                    await compiled.ainvoke({"out": []}, config=config)
            await _until(lambda: engine.budget_status()[0].reserved_microdollars == 0)

        asyncio.run(five_runs())
    (status,) = engine.budget_status()
    assert len(fake[1].state.requests) - sent_before == 4  # the first run's; none after
    assert status.spend_microdollars == 4 * estimate <= status.limit_microdollars


def test_a_tool_cancelled_with_its_graph_run_leaves_nothing_behind(fake: tuple[str, Any]) -> None:
    """A tool cancelled with its run never reports its end (langchain-core's ``arun`` catches
    ``Exception`` only): each stayed in the handler's map of runs for good, one more with
    every client that disconnected mid-tool."""
    from langgraph.graph import START, StateGraph

    hanging = chat_openai(fake, fault="hang")

    @tool
    async def research(question: str) -> str:
        """Look it up."""
        return str((await hanging.ainvoke(question)).content)

    async def node(state: dict[str, Any]) -> dict[str, list[str]]:
        return {"out": [await research.ainvoke({"question": "z"})]}

    graph = StateGraph(FannedOut)
    graph.add_node("n", node)
    graph.add_edge(START, "n")
    compiled = graph.compile()
    handler = NullSpendCallbackHandler(client=LocalNullSpend())
    config: Any = {"callbacks": [handler]}

    async def cancel_three() -> None:
        for _ in range(3):
            run = asyncio.create_task(compiled.ainvoke({"out": []}, config=config))
            await _until(lambda: bool(handler._open))
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run

    asyncio.run(cancel_three())
    assert (handler._parents, handler._open) == ({}, {})


def test_an_ainvoke_timed_out_in_a_task_that_goes_on_holds_nothing(fake: tuple[str, Any]) -> None:
    """``asyncio.timeout`` around an ``ainvoke`` (a web handler that answers "try again")
    cancels the call inside its own task, which then goes on and ends well: LangChain ended
    the call with neither end nor error. It is charged its estimate when its task ends (its
    request went out), and holds nothing after."""
    engine = LocalNullSpend([LocalBudget.total(10**6)])
    model = chat_openai(fake, fault="hang", callbacks=[NullSpendCallbackHandler(client=engine)])

    async def answer_try_again() -> str:
        try:
            async with asyncio.timeout(0.3):
                await model.ainvoke("Hello")
        except TimeoutError:
            assert engine.budget_status()[0].reserved_microdollars > 0
            return "try again"
        return "answered"

    async def serve() -> None:
        assert await asyncio.create_task(answer_try_again()) == "try again"
        await _until(lambda: engine.budget_status()[0].reserved_microdollars == 0)

    asyncio.run(serve())
    (charged,) = engine.cost_events().data
    assert charged.cost_microdollars == engine.budget_status()[0].spend_microdollars > 0


def test_a_call_timed_out_in_a_long_lived_task_is_ended_by_its_next_call(
    fake: tuple[str, Any],
) -> None:
    """A service's loop, one task for its whole life, times out a call and goes on: the call
    held its estimate until the task ended. The next call's start ends it (charged its
    estimate: its request went out), before reserving."""
    estimate = reserved_for(chat_openai(fake), fake)
    engine = LocalNullSpend([LocalBudget.total(estimate * 5 // 2)])
    handler = NullSpendCallbackHandler(client=engine)
    hanging = chat_openai(fake, fault="hang", callbacks=[handler])
    answering = chat_openai(fake, callbacks=[handler])

    async def serve_for_life() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await hanging.ainvoke("Hello")
        assert engine.budget_status()[0].reserved_microdollars == estimate
        await answering.ainvoke("Hello")
        (status,) = engine.budget_status()
        assert (status.spend_microdollars, status.reserved_microdollars) == (estimate + COST, 0)

    asyncio.run(serve_for_life())
    assert [e.cost_microdollars for e in engine.cost_events().data] == [COST, estimate]


def test_a_sync_batch_failing_part_way_holds_nothing(fake: tuple[str, Any]) -> None:
    """Sync ``generate`` calls its prompts one by one and stops at the first that fails,
    ending none of the others: the one before was answered and billed (its usage is thrown
    away with the batch: charged its estimate), the one after was never sent (released).
    ``agenerate`` calls them all at once and ends each: the answered two at their usage."""
    from langchain_core.messages import HumanMessage

    async def second_fails(request: Request, real: Response) -> Response:
        if b"second" in await request.body():
            error = {"error": {"message": "overloaded", "type": "server_error", "code": None}}
            return Response(json.dumps(error), 500, media_type="application/json")
        return real

    prompts = [[HumanMessage(text)] for text in ("first", "second", "third")]
    sync_engine, async_engine = LocalNullSpend([LocalBudget.total(10**6)]), LocalNullSpend()
    with interposed(fake[0], second_fails) as base:
        model = chat_openai((base, fake[1]), max_tokens=100)  # through the man in the middle
        with pytest.raises(openai.InternalServerError):
            model.generate(prompts, callbacks=[NullSpendCallbackHandler(client=sync_engine)])
        assert len(fake[1].state.requests) == 2  # the third was never sent
        with pytest.raises(openai.InternalServerError):
            asyncio.run(
                model.agenerate(prompts, callbacks=[NullSpendCallbackHandler(client=async_engine)])
            )
    (event,) = sync_engine.cost_events().data
    (status,) = sync_engine.budget_status()
    first_estimate = reserved_for(chat_openai(fake, max_tokens=100), fake, prompts[0])
    assert event.cost_microdollars == first_estimate > 0
    assert (status.spend_microdollars, status.reserved_microdollars) == (event.cost_microdollars, 0)
    assert [e.cost_microdollars for e in async_engine.cost_events().data] == [COST, COST]


def test_a_run_cancelled_while_its_call_reserves_holds_nothing(
    server: RunningServer, fake: tuple[str, Any]
) -> None:
    """Server mode: the handler's start runs in an executor thread and waits for the server.
    The chain around it is cancelled meanwhile; the reservation lands after the cancellation
    was heard, for a call that will never be made: it is released, not held for an hour."""
    from langchain_core.runnables import RunnableLambda

    async def slow_reserve(request: Request, real: Response) -> Response:
        if request.url.path == "/api/reservations":
            await asyncio.sleep(0.5)
        return real

    with interposed(server.base_url, slow_reserve) as base, NullSpend(server.admin_key, base) as ns:
        chain = RunnableLambda(lambda question: question) | chat_openai(fake)
        config: Any = {"callbacks": [NullSpendCallbackHandler(client=ns)]}

        async def cancel_while_reserving() -> None:
            call = asyncio.create_task(chain.ainvoke("Hello", config=config))
            await asyncio.sleep(0.2)  # the reserve is on its way
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call

        asyncio.run(cancel_while_reserving())
    deadline = time.monotonic() + 5
    while [r["status"] for r in rows(server.database_url, "SELECT status FROM reservations")] != [
        "released"
    ]:
        assert time.monotonic() < deadline, "the reservation nobody uses is still held"
        time.sleep(0.05)
    assert fake[1].state.requests == []


@pytest.mark.parametrize("stop", ["cancel", "timeout"])
def test_a_stream_stopped_after_its_usage_came_is_charged_that_usage(
    fake: tuple[str, Any], stop: str
) -> None:
    """A chain streams the model through a slow step (a moderation call, a send to a client
    that hangs up) and is stopped while the step holds the usage chunk: cancelled, or timed out
    inside a task that goes on. The chain run's cancellation is heard while the model's stream
    is still open; it is ended from the usage its chunks reported, not at its estimate."""
    from langchain_core.runnables import RunnableGenerator

    engine = LocalNullSpend()
    usage_came = asyncio.Event()

    async def slow_step(chunks: Any) -> Any:
        async for chunk in chunks:
            if chunk.usage_metadata:
                usage_came.set()
                await asyncio.sleep(10)
            yield chunk

    chain = chat_openai(fake, stream_usage=True, max_tokens=4000) | RunnableGenerator(slow_step)
    config: Any = {"callbacks": [NullSpendCallbackHandler(client=engine)]}

    async def stream() -> None:
        async for _ in chain.astream("Hello", config=config):
            pass

    async def stopped() -> None:
        if stop == "timeout":
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.5):
                    await stream()
        else:
            streaming = asyncio.create_task(stream())
            await usage_came.wait()
            streaming.cancel()
            with pytest.raises(asyncio.CancelledError):
                await streaming
        await _until(lambda: bool(engine.cost_events().data))

    asyncio.run(stopped())
    (event,) = engine.cost_events().data
    assert (event.cost_microdollars, event.input_tokens, event.output_tokens) == (COST, 176, 90)


@pytest.mark.parametrize("output_version", [None, "v1"])
def test_web_searches_on_the_responses_api_are_charged(
    fake: tuple[str, Any], output_version: str | None
) -> None:
    """OpenAI's Responses API bills each web search its built-in tool runs on top of the
    tokens; they are the answer's ``web_search_call`` items, which LangChain keeps as content
    blocks (``server_tool_call`` ones in its v1 output), streamed or not."""
    from nullspend.pricing import cost as priced

    expected = priced(
        Usage(input_tokens=176, cache_read_tokens=1024, output_tokens=90, web_search_requests=2),
        "gpt-4o-mini",
    ).total_microdollars
    assert expected > COST

    def searching(engine: LocalNullSpend) -> Any:
        model = ChatOpenAI(
            model="gpt-4o-mini",
            base_url=f"{fake[0]}/v1",
            api_key="sk-test",  # type: ignore[arg-type]
            max_retries=0,
            use_responses_api=True,
            output_version=output_version,
            default_headers=fake_headers({**USAGE, "web_searches": 2}, ""),
            callbacks=[NullSpendCallbackHandler(client=engine)],
        )
        return model.bind_tools([{"type": "web_search_preview"}])

    assert searched_both_ways(searching) == [(expected, 2)] * 2


@pytest.mark.parametrize("use_responses_api", [False, True])
def test_a_call_served_in_the_priority_tier_is_priced_and_estimated_at_its_rates(
    fake: tuple[str, Any], use_responses_api: bool
) -> None:
    """ChatOpenAI's ``service_tier="priority"``: OpenAI bills about twice the standard rates,
    and langchain-openai reports such usage under the tier's name ("priority_cache_read")."""
    from nullspend.pricing import cost as priced

    usage = Usage(input_tokens=1200 - 1024, cache_read_tokens=1024, output_tokens=90)
    expected = priced(usage, "gpt-4o-mini", service_tier="priority").total_microdollars
    assert expected > COST
    recorded = []
    for streamed in (False, True):
        engine = LocalNullSpend()
        model = chat_openai(
            fake,
            service_tier="priority",
            stream_usage=True,
            use_responses_api=use_responses_api,
            callbacks=[NullSpendCallbackHandler(client=engine)],
        )
        list(model.stream("Hello")) if streamed else model.invoke("Hello")
        (event,) = engine.cost_events().data
        recorded.append((event.cost_microdollars, event.cached_input_tokens))
    assert recorded == [(expected, 1024)] * 2
    standard = reserved_for(chat_openai(fake, use_responses_api=use_responses_api), fake)
    priority = chat_openai(fake, service_tier="priority", use_responses_api=use_responses_api)
    assert reserved_for(priority, fake) > standard
