"""The proxy, driven by the real openai and anthropic SDKs (and raw httpx for the bytes),
against the fake upstream in tests/fakes, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.nullspend_server.conftest import RunningServer, start_server
from tests.nullspend_server.dbtools import rows

USAGE = {"input": 1200, "cached": 1024, "output": 90, "reasoning": 0, "cache_write": 0}


@pytest.fixture
def proxy(database_url: str, fake: tuple[str, Any]) -> Iterator[RunningServer]:
    base, _ = fake
    server = start_server(
        database_url,
        openai_upstream=base,
        anthropic_upstream=base,
        upstream_allowlist=[base],
        upstream_timeout_seconds=3,
        key_cache_seconds=0.2,
    )
    yield server
    server.stop()


def openai_client(proxy: RunningServer, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{proxy.base_url}/v1",
        api_key="sk-test",
        max_retries=0,
        default_headers={
            "X-NullSpend-Key": proxy.admin_key,
            "x-fake-usage": json.dumps(USAGE),
            **headers,
        },
    )


def anthropic_client(proxy: RunningServer, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=proxy.base_url,
        api_key="sk-ant-test",
        max_retries=0,
        default_headers={
            "X-NullSpend-Key": proxy.admin_key,
            "x-fake-usage": json.dumps(USAGE),
            **headers,
        },
    )


def events(proxy: RunningServer) -> list[dict[str, Any]]:
    """The proxy settles after responding: wait for the cost events to land."""
    deadline = time.monotonic() + 10
    # pending first: an event committed after this read is still seen by the read below
    while rows(proxy.database_url, "SELECT id FROM reservations WHERE status = 'active'"):
        assert time.monotonic() < deadline, "the proxy did not settle"
        time.sleep(0.05)
    return rows(proxy.database_url, "SELECT * FROM cost_events ORDER BY seq")


def tags_of(proxy: RunningServer, event: dict[str, Any]) -> dict[str, str]:
    found = rows(
        proxy.database_url,
        "SELECT key, value FROM cost_event_tags WHERE event_seq = :s",
        s=event["seq"],
    )
    return {r["key"]: r["value"] for r in found}


# gpt-4o-mini: $0.15 input, $0.075 cached, $0.60 output per million tokens
GPT_4O_MINI_COST = round((1200 - 1024) * 0.15 + 1024 * 0.075 + 90 * 0.6)


def test_chat_completion_is_priced_and_recorded(
    proxy: RunningServer, fake: tuple[str, Any]
) -> None:
    client = openai_client(proxy)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello"}], max_tokens=100
    )
    completion = raw.parse()
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 1200
    assert raw.headers["X-NullSpend-Cost-Microdollars"] == str(GPT_4O_MINI_COST)
    assert len(raw.headers["X-NullSpend-Trace-Id"]) == 32
    assert float(raw.headers["x-nullspend-overhead-ms"]) >= 0
    [event] = events(proxy)
    assert (event["source"], event["provider"], event["model"]) == (
        "proxy",
        "openai",
        completion.model,
    )
    assert event["cost_microdollars"] == GPT_4O_MINI_COST
    assert (event["input_tokens"], event["cached_input_tokens"]) == (176, 1024)
    assert event["upstream_status"] == 200
    forwarded = fake[1].state.requests[-1]
    assert forwarded["headers"]["authorization"] == "Bearer sk-test"  # credentials pass through
    assert not any(h.startswith("x-nullspend") for h in forwarded["headers"])


def test_a_compaction_is_priced_and_recorded(proxy: RunningServer) -> None:
    """``responses.compact`` runs the model over a conversation: priced from its usage at the
    model the request named (a compaction names none), not let through unmetered."""
    raw = openai_client(proxy).responses.with_raw_response.compact(
        model="gpt-4o-mini", input="Hello"
    )
    assert raw.parse().usage.input_tokens == 1200
    assert raw.headers["X-NullSpend-Cost-Microdollars"] == str(GPT_4O_MINI_COST)
    [event] = events(proxy)
    assert (event["model"], event["cost_microdollars"]) == ("gpt-4o-mini", GPT_4O_MINI_COST)


def test_a_priority_call_is_priced_at_the_priority_rates(proxy: RunningServer) -> None:
    """OpenAI bills a call its priority tier served at about twice the standard rates: the
    answer's service_tier prices it, streamed (the tier rides on the usage chunk) or not."""
    # gpt-4o-mini, priority: $0.25 input, $0.125 cached, $1 output per million tokens
    priority_cost = (1200 - 1024) * 25 // 100 + 1024 * 125 // 1000 + 90
    client = openai_client(proxy)
    asked = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    raw = client.chat.completions.with_raw_response.create(**asked, service_tier="priority")
    assert raw.parse().service_tier == "priority"
    assert raw.headers["X-NullSpend-Cost-Microdollars"] == str(priority_cost)
    list(client.chat.completions.create(**asked, service_tier="priority", stream=True))
    client.responses.create(model="gpt-4o-mini", input="Hi", service_tier="priority")
    assert [event["cost_microdollars"] for event in events(proxy)] == [priority_cost] * 3


def test_stream_without_include_usage_is_priced_and_looks_untouched(
    proxy: RunningServer, fake: tuple[str, Any]
) -> None:
    stream = openai_client(proxy).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    chunks = list(stream)
    assert chunks
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert fake[1].state.requests[-1]["json"]["stream_options"] == {"include_usage": True}
    [event] = events(proxy)
    assert event["cost_microdollars"] == GPT_4O_MINI_COST


def test_stream_with_include_usage_keeps_the_usage_chunk(proxy: RunningServer) -> None:
    stream = openai_client(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    usage = [chunk.usage for chunk in stream if chunk.usage]
    assert usage[0].completion_tokens == 90
    assert events(proxy)[0]["cost_microdollars"] == GPT_4O_MINI_COST


def test_stream_bytes_pass_unchanged(proxy: RunningServer, fake: tuple[str, Any]) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": "Bearer sk-test", "x-fake-usage": json.dumps(USAGE)}
    direct = httpx.post(f"{fake[0]}/v1/chat/completions", json=body, headers=headers).content
    proxied = httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        json=body,
        headers={**headers, "X-NullSpend-Key": proxy.admin_key},
    ).content
    assert proxied == direct


def test_streamed_responses_carry_the_nullspend_headers(proxy: RunningServer) -> None:
    """A stream's response head is written by the proxy's own responder: the provider's headers
    and NullSpend's, but no cost (it is not known before the stream ends)."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    headers = {"X-NullSpend-Key": proxy.admin_key, "X-NullSpend-Session": "run-7"}
    with httpx.stream(
        "POST", f"{proxy.base_url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        response.read()
    assert response.headers["content-type"].startswith("text/event-stream")
    assert len(response.headers["X-NullSpend-Trace-Id"]) == 32
    assert response.headers["NullSpend-Version"]
    assert response.headers["X-NullSpend-Session"] == "run-7"
    assert float(response.headers["x-nullspend-overhead-ms"]) >= 0
    assert "X-NullSpend-Cost-Microdollars" not in response.headers


def test_async_client_and_responses_stream(proxy: RunningServer) -> None:
    async def run() -> int:
        client = openai.AsyncOpenAI(
            base_url=f"{proxy.base_url}/v1",
            api_key="sk-test",
            default_headers={"X-NullSpend-Key": proxy.admin_key, "x-fake-usage": json.dumps(USAGE)},
        )
        stream = await client.responses.create(model="gpt-4o-mini", input="Hi", stream=True)
        kinds = [event.type async for event in stream]
        await client.close()
        return kinds.count("response.completed")

    assert asyncio.run(run()) == 1
    [event] = events(proxy)
    assert event["cost_microdollars"] == GPT_4O_MINI_COST


# claude-sonnet-4-5: $3 input, $0.30 cache read, $15 output per million tokens
def test_anthropic_messages_and_stream_helper(proxy: RunningServer, fake: tuple[str, Any]) -> None:
    usage = {"input": 20, "cached": 6000, "output": 87, "reasoning": 0, "cache_write": 1500}
    client = anthropic_client(proxy, **{"x-fake-usage": json.dumps(usage)})
    message = client.messages.create(
        model="claude-sonnet-4-5-20250929",
        max_tokens=200,
        messages=[{"role": "user", "content": "Hello"}],
    )
    assert message.usage.input_tokens == 20
    with client.messages.stream(
        model="claude-sonnet-4-5-20250929",
        max_tokens=200,
        messages=[{"role": "user", "content": "Hello"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.output_tokens == 87
    # the Claude Code CLI sends ?beta=true
    beta = httpx.post(
        f"{proxy.base_url}/v1/messages?beta=true",
        headers={
            "X-NullSpend-Key": proxy.admin_key,
            "x-api-key": "sk-ant-test",
            "anthropic-version": "2023-06-01",
            "x-fake-usage": json.dumps(usage),
        },
        json={
            "model": "claude-sonnet-4-5-20250929",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "Hello"}],
        },
    )
    assert beta.status_code == 200
    assert fake[1].state.requests[-1]["query"] == "beta=true"
    expected = 20 * 3 + 6000 * 0.3 + 1500 * 3.75 + 87 * 15  # 8790 microdollars
    assert [e["cost_microdollars"] for e in events(proxy)] == [expected] * 3


# The compaction docs' example (the summary read 180,000 tokens the answer's 23,000 leave out),
# and an advisor call on Opus 4.8; the top-level usage counts neither.
ITERATED_USAGE = {"input": 23000, "cached": 0, "output": 1000, "reasoning": 0, "cache_write": 0}
ITERATIONS = [
    {"type": "compaction", "input": 180000, "output": 3500},
    {"type": "advisor_message", "model": "claude-opus-4-8", "input": 21000, "output": 1600},
]
# Sonnet 4.5 ($3 in, $15 out) for the answer and the summary, Opus 4.8 ($5 in, $25 out) for
# the advice: 84,000 + 592,500 + 145,000 microdollars.
ITERATED_COST = (23000 * 3 + 1000 * 15) + (180000 * 3 + 3500 * 15) + (21000 * 5 + 1600 * 25)
ADVISOR_TOOL: Any = {
    "type": "advisor_20260301",
    "name": "advisor",
    "model": "claude-opus-4-8",
    "max_uses": 2,
}


def test_compaction_and_advisor_iterations_are_billed(proxy: RunningServer) -> None:
    """Server-side compaction and the advisor tool bill passes the top-level usage leaves out
    (``usage.iterations``): the call is priced as billed, each pass at its own model, where
    the top-level counts alone recorded $0.084 of an $0.8215 bill."""
    client = anthropic_client(
        proxy,
        **{"x-fake-usage": json.dumps(ITERATED_USAGE), "x-fake-iterations": json.dumps(ITERATIONS)},
    )
    request: Any = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "Hello"}],
        "betas": ["compact-2026-01-12", "advisor-tool-2026-03-01"],
        "context_management": {"edits": [{"type": "compact_20260112"}]},
        "tools": [ADVISOR_TOOL],
    }
    raw = client.beta.messages.with_raw_response.create(**request)
    message = raw.parse()
    assert message.usage.iterations is not None
    assert len(message.usage.iterations) == 3
    assert raw.headers["X-NullSpend-Cost-Microdollars"] == str(ITERATED_COST)
    with client.beta.messages.stream(**request) as stream:
        final = stream.get_final_message()
    assert final.usage.iterations is not None
    assert [i.type for i in final.usage.iterations] == ["compaction", "advisor_message", "message"]
    recorded = events(proxy)
    assert [e["cost_microdollars"] for e in recorded] == [ITERATED_COST] * 2
    # Every token billed is recorded: the summary's and the advice's with the answer's.
    assert {(e["input_tokens"], e["output_tokens"]) for e in recorded} == {(224000, 6100)}
    assert tags_of(proxy, recorded[0]) == {}


def test_denied_before_any_byte_reaches_the_upstream(
    proxy: RunningServer, fake: tuple[str, Any]
) -> None:
    with proxy.client() as admin:
        admin.post("/api/budgets", json={"entityType": "user", "limitMicrodollars": 10})
    before = len(fake[1].state.requests)
    with pytest.raises(openai.RateLimitError) as denied:
        openai_client(proxy).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=1000
        )
    assert denied.value.response.headers["X-NullSpend-Denied"] == "1"
    assert denied.value.body["code"] == "budget_exceeded"  # type: ignore[index]
    assert len(fake[1].state.requests) == before


def test_upstream_error_passes_through_and_releases(proxy: RunningServer) -> None:
    with pytest.raises(openai.InternalServerError) as failed:
        openai_client(proxy, **{"x-fake-fault": "status:500"}).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )
    assert failed.value.status_code == 500
    assert events(proxy) == []
    [reservation] = rows(proxy.database_url, "SELECT status FROM reservations")
    assert reservation["status"] == "released"


def test_upstream_timeout_is_502_and_charged_its_estimate(proxy: RunningServer) -> None:
    """The request went out and no answer came within the timeout: the provider may be running
    it (a long non-streamed call), and bills it. It was released at $0; N such calls spent N
    times past a cap. Now charged its estimate, as the tracked clients charge a read timeout."""
    response = httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        timeout=30,
        headers={"X-NullSpend-Key": proxy.admin_key, "x-fake-fault": "hang"},
        json={"model": "gpt-4o-mini", "messages": [], "max_tokens": 50},
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
    [event] = events(proxy)
    assert {"_ns_estimated", "_ns_no_usage"} <= tags_of(proxy, event).keys()
    assert event["cost_microdollars"] == event_estimate(proxy, event) > 0
    assert event["upstream_status"] is None


def test_an_unreachable_upstream_is_502_and_released(database_url: str) -> None:
    """Never sent (the connection was refused): nothing spent."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    server = start_server(database_url, openai_upstream=f"http://127.0.0.1:{port}")
    try:
        response = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            timeout=30,
            headers={"X-NullSpend-Key": server.admin_key},
            json={"model": "gpt-4o-mini", "messages": []},
        )
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unavailable"
        assert events(server) == []
        [reservation] = rows(server.database_url, "SELECT status FROM reservations")
        assert reservation["status"] == "released"
    finally:
        server.stop()


def test_stream_cut_short_is_recorded_at_the_estimate(proxy: RunningServer) -> None:
    stream = openai_client(proxy, **{"x-fake-fault": "drop-after:2"}).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        max_tokens=50,
    )
    with pytest.raises(Exception):  # noqa: B017, PT011  (the SDK sees the stream break off)
        list(stream)
    [event] = events(proxy)
    assert {"_ns_estimated", "_ns_no_usage"} <= tags_of(proxy, event).keys()


def test_an_anthropic_stream_whose_delta_counts_no_output_is_recorded_at_the_estimate(
    proxy: RunningServer,
) -> None:
    """message_start's output count is a placeholder (1); only a message_delta counts the
    output. A stream whose delta carried no usage (a gateway that strips it) was recorded from
    message_start's counts: its input, and 1 output token."""
    headers = {"X-NullSpend-Key": proxy.admin_key, "x-fake-fault": "no-usage"}
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }
    # Raw bytes: the anthropic SDK's own stream reader fails on a delta without usage.
    answer = httpx.post(f"{proxy.base_url}/v1/messages", json=body, headers=headers, timeout=30)
    assert answer.status_code == 200
    assert b"message_stop" in answer.content
    [event] = events(proxy)
    assert {"_ns_estimated", "_ns_no_usage"} <= tags_of(proxy, event).keys()
    assert event["cost_microdollars"] == event_estimate(proxy, event)


def event_estimate(proxy: RunningServer, event: dict[str, Any]) -> int:
    (reservation,) = rows(
        proxy.database_url,
        "SELECT estimate_microdollars FROM reservations WHERE id = :id",
        id=event["reservation_id"],
    )
    estimate: int = reservation["estimate_microdollars"]
    return estimate


def test_usage_no_call_can_have_is_charged_the_estimate(proxy: RunningServer) -> None:
    """A gateway's answer claiming 10**30 prompt tokens priced past one call's most: the settle
    was refused, so the call was never recorded and its reservation stayed active."""
    usage = json.dumps({**USAGE, "input": 10**30, "cached": 0})
    openai_client(proxy, **{"x-fake-usage": usage}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], max_tokens=10
    )
    [event] = events(proxy)
    assert event["cost_microdollars"] == event_estimate(proxy, event)
    assert {"_ns_estimated", "_ns_no_usage"} <= tags_of(proxy, event).keys()


def test_client_disconnect_settles_at_the_estimate(proxy: RunningServer) -> None:
    headers = {"X-NullSpend-Key": proxy.admin_key, "x-fake-fault": "slow:300"}
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
        "max_tokens": 50,
    }
    started = time.monotonic()
    with httpx.stream(
        "POST", f"{proxy.base_url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        first = next(response.iter_raw())
    assert first.startswith(b"data:")
    assert time.monotonic() - started < 1.0  # the first event arrived while upstream was slow
    [event] = events(proxy)
    assert {"_ns_estimated", "_ns_cancelled"} <= tags_of(proxy, event).keys()
    # Settled long before the upstream would have sent its last event (8 x 300 ms): the
    # proxy closed the upstream call when the client left, rather than reading it out.
    assert time.monotonic() - started < 1.8


def test_unknown_model_is_forwarded_and_tagged_unpriced(proxy: RunningServer) -> None:
    openai_client(proxy).chat.completions.create(
        model="acme-private", messages=[{"role": "user", "content": "Hi"}], max_tokens=10
    )
    [event] = events(proxy)
    assert {"_ns_estimated", "_ns_unpriced"} <= tags_of(proxy, event).keys()


def test_unknown_route_and_oversized_body(proxy: RunningServer) -> None:
    headers = {"X-NullSpend-Key": proxy.admin_key}
    missing = httpx.post(f"{proxy.base_url}/v1/embeddings", json={}, headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    huge = httpx.post(
        f"{proxy.base_url}/v1/chat/completions",
        headers=headers,
        content=b"x" * (10 * 1024 * 1024 + 1),
    )
    assert huge.status_code == 413


def test_attribution_headers(proxy: RunningServer, fake: tuple[str, Any]) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    raw = openai_client(
        proxy,
        **{
            "traceparent": f"00-{trace}-00f067aa0ba902b7-01",
            "X-NullSpend-Session": "run-1",
            "X-NullSpend-Tags": json.dumps({"team": "ml", "_ns_bad": "x"}),
            "X-NullSpend-Customer": "acme",
        },
    ).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    assert raw.headers["X-NullSpend-Trace-Id"] == trace
    assert raw.headers["X-NullSpend-Session"] == "run-1"
    assert "tags ignored" in raw.headers["X-NullSpend-Warning"]
    [event] = events(proxy)
    assert (event["trace_id"], event["session_id"], event["customer"]) == (trace, "run-1", "acme")
    assert event["duration_ms"] is not None  # the call's latency is recorded
    assert event["duration_ms"] >= 0
    forwarded = fake[1].state.requests[-1]["headers"]
    assert forwarded["traceparent"] == f"00-{trace}-00f067aa0ba902b7-01"  # passed on as sent


def test_async_sdks_and_streaming_helpers(proxy: RunningServer) -> None:
    usage = json.dumps(USAGE)

    async def run() -> tuple[int, int]:
        anthropic_async = anthropic.AsyncAnthropic(
            base_url=proxy.base_url,
            api_key="sk-ant-test",
            max_retries=0,
            default_headers={"X-NullSpend-Key": proxy.admin_key, "x-fake-usage": usage},
        )
        async with anthropic_async.messages.stream(
            model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            final = await stream.get_final_message()
        openai_async = openai.AsyncOpenAI(
            base_url=f"{proxy.base_url}/v1",
            api_key="sk-test",
            max_retries=0,
            default_headers={"X-NullSpend-Key": proxy.admin_key, "x-fake-usage": usage},
        )
        async with openai_async.chat.completions.stream(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        ) as chat_stream:
            completion = await chat_stream.get_final_completion()
        return final.usage.output_tokens, len(completion.choices)

    assert asyncio.run(run()) == (90, 1)
    costs = sorted(e["cost_microdollars"] for e in events(proxy))
    # claude-haiku-4-5 ($1 input, $0.10 cache read, $5 output) and gpt-4o-mini
    assert costs == sorted([GPT_4O_MINI_COST, round(1200 * 1 + 1024 * 0.1 + 90 * 5)])


def test_revoked_key_is_refused_by_the_proxy_within_the_cache_time(proxy: RunningServer) -> None:
    """The proxy trusts a key lookup for NULLSPEND_KEY_CACHE_SECONDS (0.2 s in tests); a
    revocation made elsewhere (the CLI, another process) is seen once that time has passed."""
    member = proxy.new_key("member")
    with proxy.client() as admin:
        key_id = next(
            k["id"] for k in admin.get("/api/keys").json()["data"] if k["prefix"] == member[:19]
        )
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"X-NullSpend-Key": member}
    url = f"{proxy.base_url}/v1/chat/completions"
    assert httpx.post(url, json=body, headers=headers).status_code == 200
    from tests.nullspend_server.dbtools import execute

    now = "CURRENT_TIMESTAMP"
    execute(
        proxy.database_url, f"UPDATE api_keys SET revoked_at = {now} WHERE id = :id", id=key_id
    )  # behind the server's back, as another process would
    time.sleep(0.3)
    refused = httpx.post(url, json=body, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "authentication_required"


@pytest.mark.parametrize(
    ("header", "value"),
    [("Authorization", "Bearer {key}"), ("x-api-key", "{key}")],
)
def test_a_nullspend_key_in_a_provider_credential_header_never_reaches_the_provider(
    proxy: RunningServer, fake: tuple[str, Any], header: str, value: str
) -> None:
    """Authorization and x-api-key are forwarded to the provider: a NullSpend key there (an
    OpenAI SDK given it as its api_key) was accepted from Bearer and sent on to the provider.
    It is refused instead, alone or beside X-NullSpend-Key, before anything is forwarded."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
    credential = {header: value.format(key=proxy.admin_key)}
    for headers in (credential, {**credential, "X-NullSpend-Key": proxy.admin_key}):
        for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            refused = httpx.request(
                method, f"{proxy.base_url}{path}", json=body, headers=headers, timeout=30
            )
            assert refused.status_code == 401
            error = refused.json()["error"]
            assert error["code"] == "authentication_required"
            assert "X-NullSpend-Key" in error["message"]
            assert error["details"] == {"header": header}
    assert fake[1].state.requests == []
    assert rows(proxy.database_url, "SELECT id FROM reservations") == []


def test_a_stream_that_outlasts_the_reservation_ttl_is_charged_its_usage(
    database_url: str, fake: tuple[str, Any]
) -> None:
    """The upstream timeout is per chunk, so a stream can outlast its reservation's TTL: the
    expiry sweep charged it its estimate (606 µ$ for a 7 µ$ call, with a bug hunt's TTL of 2 s)
    and refused its real settle. The process now keeps its calls' reservations alive."""
    base, _ = fake
    server = start_server(
        database_url,
        openai_upstream=base,
        reservation_ttl_seconds=1,
        heartbeat_seconds=0.2,
        upstream_timeout_seconds=3,
    )
    try:
        client = openai_client(server, **{"x-fake-fault": "slow:300"})  # 8 events, about 2.4 s
        started = time.monotonic()
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        assert len(list(stream)) > 1
        assert time.monotonic() - started > 2  # past the TTL, twice over
        [event] = events(server)
        assert event["cost_microdollars"] == GPT_4O_MINI_COST
        assert not tags_of(server, event)
    finally:
        server.stop()
