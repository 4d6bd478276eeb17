"""The proxy's pipeline rules: upstream choice, free routes, rate limit, unpriced models,
storage failure, budget headers, and exact stream costs."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import psycopg
import pytest
from sqlalchemy.engine import make_url
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from nullspend.limits import MAX_CALL_MICRODOLLARS
from nullspend_server.db.sqlite_direct import DirectSQLite
from tests.fakes.upstream import serving
from tests.nullspend_server.conftest import RunningServer, fresh_database, start_server
from tests.nullspend_server.dbtools import rows
from tests.nullspend_server.test_proxy import event_estimate, events, tags_of

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20}


def serve(database_url: str, fake_base: str, **settings: Any) -> RunningServer:
    return start_server(
        database_url, openai_upstream="http://127.0.0.1:9", anthropic_upstream=fake_base, **settings
    )


def post(
    server: RunningServer, path: str = "/v1/chat/completions", body: Any = None, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}{path}",
        json=CHAT if body is None else body,
        headers={"X-NullSpend-Key": server.admin_key, **headers},
        timeout=30,
    )


def scripted(path: str, answer: Callable[[], Response]) -> tuple[Starlette, list[bytes]]:
    """An upstream that answers ``path`` with ``answer()``, and the raw bodies it was sent."""
    bodies: list[bytes] = []

    async def handle(request: Request) -> Response:
        bodies.append(await request.body())
        return answer()

    return Starlette(routes=[Route(path, handle, methods=["POST"])]), bodies


def test_upstream_override_only_from_the_allowlist(
    database_url: str, fake: tuple[str, Any]
) -> None:
    server = serve(database_url, fake[0], upstream_allowlist=[fake[0]])
    try:
        assert post(server).status_code == 502  # the default OpenAI upstream here is closed
        assert post(server, **{"X-NullSpend-Upstream": fake[0]}).status_code == 200
        refused = post(server, **{"X-NullSpend-Upstream": "http://evil.example"})
        assert refused.status_code == 400
        assert "ALLOWLIST" in refused.json()["error"]["message"]
    finally:
        server.stop()


def test_count_tokens_and_models_are_forwarded_free(
    database_url: str, fake: tuple[str, Any]
) -> None:
    server = serve(database_url, fake[0])
    try:
        counted = post(
            server, "/v1/messages/count_tokens", {"model": "claude-haiku-4-5", "messages": []}
        )
        assert counted.json() == {"input_tokens": 42}
        models = httpx.get(
            f"{server.base_url}/v1/models",
            headers={"X-NullSpend-Key": server.admin_key, "x-api-key": "sk-ant"},
        )
        assert models.json()["object"] == "list"
        assert events(server) == []
        assert httpx.get(f"{server.base_url}/v1/models").status_code == 401  # still our key
    finally:
        server.stop()


def test_rate_limit_per_key(database_url: str, fake: tuple[str, Any]) -> None:
    server = serve(database_url, fake[0], rate_limit_per_minute=3, upstream_allowlist=[fake[0]])
    try:
        statuses = [post(server, **{"X-NullSpend-Upstream": fake[0]}).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = post(server)
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["Retry-After"]) >= 1
    finally:
        server.stop()


def test_made_up_keys_share_one_count_and_a_pasted_key_s_space_is_ignored(
    database_url: str, fake: tuple[str, Any]
) -> None:
    """Every made-up key presented to the proxy was counted on its own, kept for the rest of
    the minute before the lookup refused it (5,000 random 8 kB keys: 15 MB); they now share
    one count. A key with a trailing space (pasted) was refused as malformed, where the API
    took it as a Bearer key."""
    server = serve(database_url, fake[0], rate_limit_per_minute=3, upstream_allowlist=[fake[0]])
    try:
        statuses = [post(server, **{"X-NullSpend-Key": f"bad-{i}"}).status_code for i in range(4)]
        assert statuses == [401, 401, 401, 429]
        # httpx refuses to send the space; curl, as users paste keys, sends it.
        host, port = server.base_url.removeprefix("http://").split(":")
        spaced = {"X-NullSpend-Key": f"{server.admin_key} ", "X-NullSpend-Upstream": fake[0]}
        for method, path, body in (
            ("POST", "/v1/chat/completions", json.dumps(CHAT)),
            ("GET", "/api/auth/introspect", None),
        ):
            connection = http.client.HTTPConnection(host, int(port), timeout=30)
            connection.request(method, path, body, {**spaced, "Content-Type": "application/json"})
            answer = connection.getresponse()
            assert answer.status == 200, answer.read()
            connection.close()
    finally:
        server.stop()


def test_client_gone_before_its_body_arrived(
    database_url: str, fake: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing reserved, nothing forwarded, no error logged; the next call goes through."""
    server = serve(database_url, fake[0], upstream_allowlist=[fake[0]])
    try:
        host, port = server.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                + f"X-NullSpend-Key: {server.admin_key}\r\n".encode()
                + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                + b'{"model": "gpt-4o-mini", '
            )
            time.sleep(0.3)  # the proxy is now waiting for the rest of the body
        time.sleep(0.3)
        assert post(server, **{"X-NullSpend-Upstream": fake[0]}).status_code == 200
        assert len(rows(database_url, "SELECT id FROM reservations")) == 1
        assert len(fake[1].state.requests) == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        server.stop()


def test_an_answer_broken_off_after_its_status_is_charged_its_estimate(
    database_url: str,
) -> None:
    """The provider answered 200, then its (non-streamed) body broke off: it ran the call and
    bills it. The proxy released it at $0; it now charges the estimate, as for a stream that
    breaks off, and the client still hears 502."""

    async def broken_off() -> AsyncIterator[bytes]:
        yield b'{"id": "msg_1", "type": "message", "role": "assistant", '
        raise ConnectionAbortedError("the upstream broke off")

    upstream, _ = scripted(
        "/v1/messages", lambda: StreamingResponse(broken_off(), media_type="application/json")
    )
    with serving(upstream) as base:
        server = serve(database_url, base)
        try:
            message = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": []}
            response = post(server, "/v1/messages", message)
            assert response.status_code == 502
            assert response.json()["error"]["code"] == "upstream_unavailable"
            [event] = events(server)
            assert {"_ns_estimated", "_ns_no_usage"} <= tags_of(server, event).keys()
            assert event["cost_microdollars"] == event_estimate(server, event) > 0
            assert event["upstream_status"] == 200
        finally:
            server.stop()


def test_json_nested_past_the_parser_is_no_500(database_url: str, fake: tuple[str, Any]) -> None:
    """Past its depth json.loads raises RecursionError, not ValueError: a request body nested
    that deep answered 500. It is a validation error now; such tags are ignored as tags that are
    not JSON are, and such an answer is recorded at the estimate as one without usage is."""
    nested = b"[" * 5000 + b"]" * 5000
    answer = Response(b'{"content": ' + nested + b"}", media_type="application/json")
    upstream, _ = scripted("/v1/chat/completions", lambda: answer)
    with serving(upstream) as base:
        server = serve(database_url, fake[0], upstream_allowlist=[base])
        try:
            body = b'{"model": "claude-haiku-4-5", "max_tokens": 5, "messages": ' + nested + b"}"
            refused = httpx.post(
                f"{server.base_url}/v1/messages",
                content=body,
                headers={"X-NullSpend-Key": server.admin_key},
            )
            assert refused.status_code == 400
            assert refused.json()["error"] == {
                "code": "validation_error",
                "message": "the request body is nested too deeply to read",
                "details": None,
            }
            assert fake[1].state.requests == []
            message = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}
            tagged = post(server, "/v1/messages", message, **{"X-NullSpend-Tags": "[" * 5000})
            assert tagged.status_code == 200
            assert "tags ignored" in tagged.headers["X-NullSpend-Warning"]
            answered = post(server, **{"X-NullSpend-Upstream": base})
            assert answered.status_code == 200
            assert answered.content == answer.body
            _, event = events(server)
            assert {"_ns_estimated", "_ns_no_usage"} <= tags_of(server, event).keys()
        finally:
            server.stop()


def test_a_streamed_chat_asked_for_its_usage_is_forwarded_as_written(database_url: str) -> None:
    """To ask a chat stream for its usage the proxy re-encoded the body: a lone surrogate
    escape (an emoji cut in half) could not be encoded (500), and a number past a float's range
    went out as ``Infinity``, which is no JSON. The option is now added after the body as
    written."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
    delta = {"index": 0, "delta": {"content": "x"}, "finish_reason": None}
    usage = {"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050}
    events_sent = [
        {**chunk, "choices": [delta], "usage": None},
        {**chunk, "choices": [], "usage": usage},
    ]
    stream = b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events_sent)
    upstream, bodies = scripted(
        "/v1/chat/completions",
        lambda: Response(stream + b"data: [DONE]\n\n", media_type="text/event-stream"),
    )
    body = (
        b'{"model": "gpt-4o-mini", "stream": true, "temperature": 1e999,\n'
        b' "messages": [{"role": "user", "content": "cut \\ud83d"}]}\n'
    )
    with serving(upstream) as base:
        server = serve(database_url, base, upstream_allowlist=[base])
        try:
            response = httpx.post(
                f"{server.base_url}/v1/chat/completions",
                content=body,
                headers={"X-NullSpend-Key": server.admin_key, "X-NullSpend-Upstream": base},
            )
            assert response.status_code == 200, response.text
            assert b'"usage"' not in response.content  # the client did not ask for it
            assert bodies == [body.rstrip()[:-1] + b',"stream_options":{"include_usage":true}}']
            [event] = events(server)
            assert event["cost_microdollars"] == round(1000 * 0.15 + 50 * 0.6)  # gpt-4o-mini
        finally:
            server.stop()


WEB_SEARCH = {"type": "web_search_20250305", "name": "web_search", "max_uses": 10**20}


def test_an_estimate_above_one_calls_most_is_a_validation_error(
    database_url: str, fake: tuple[str, Any]
) -> None:
    """An absurd count made an estimate past BIGINT: 500 on SQLite, and a misleading 503
    budget_unavailable on PostgreSQL. Counts the provider caps (``n``, ``max_tokens``) are
    estimated at its caps and the request forwarded (the provider answers it); an estimate still
    above one call's most is refused before reserving."""
    server = start_server(database_url, openai_upstream=fake[0], anthropic_upstream=fake[0])
    try:
        for count in ({"n": 10**15}, {"max_tokens": 10**25}, {"max_tokens": 10**4299}):
            assert post(server, "/v1/chat/completions", {**CHAT, **count}).status_code == 200
        searching = {"model": "claude-sonnet-4-5", "max_tokens": 10, "tools": [WEB_SEARCH]}
        refused = post(server, "/v1/messages", searching)
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "validation_error"
        assert "one call's most" in error["message"]
        assert error["details"] == {"maxMicrodollars": MAX_CALL_MICRODOLLARS}
        assert len(fake[1].state.requests) == 3  # the chats'
        assert len(rows(database_url, "SELECT id FROM reservations")) == 3
    finally:
        server.stop()


def test_unpriced_models_can_be_denied(database_url: str, fake: tuple[str, Any]) -> None:
    server = serve(database_url, fake[0], deny_unpriced=True)
    try:
        denied = post(
            server, "/v1/messages", {"model": "acme-private", "max_tokens": 5, "messages": []}
        )
        assert denied.status_code == 429
        assert denied.json()["error"]["code"] == "unpriced_model"
        assert fake[1].state.requests == []
    finally:
        server.stop()


def assert_failed_closed(response: httpx.Response, fake: tuple[str, Any]) -> None:
    """503 ``budget_unavailable``, and the upstream saw only the call made before the fault."""
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "budget_unavailable"
    assert len(fake[1].state.requests) == 1  # never an unmetered forward


def test_storage_unavailable_fails_closed(postgres_url: str, fake: tuple[str, Any]) -> None:
    """The database goes away (connections killed, new ones refused): the proxy answers 503
    and forwards nothing, rather than letting a call through unmetered."""
    server = serve(postgres_url, fake[0], key_cache_seconds=60)
    name = make_url(postgres_url).database
    message = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}
    admin_url = make_url(postgres_url).set(drivername="postgresql", database="postgres")
    try:
        assert post(server, "/v1/messages", message).status_code == 200  # the key is now cached
        with psycopg.connect(
            admin_url.render_as_string(hide_password=False), autocommit=True
        ) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
            )
            response = post(server, "/v1/messages", message)
            unknown_key = httpx.get(
                f"{server.base_url}/api/auth/introspect",
                headers={"X-NullSpend-Key": "ns_live_sk_" + "1" * 32},
            )
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert unknown_key.status_code == 503  # not a 500: the key cannot even be looked up
        assert_failed_closed(response, fake)
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("team", "entity_header"),
    [
        ("ml", "tag:team=ml"),
        ("機械\n学習 50%", "tag:team=%E6%A9%9F%E6%A2%B0%0A%E5%AD%A6%E7%BF%92 50%25"),
    ],
)
def test_budget_headers_name_the_tightest_budget(
    database_url: str, fake: tuple[str, Any], team: str, entity_header: str
) -> None:
    """A tag value may hold any character; the header carries it percent-encoded where HTTP
    would not (it used to answer 500 after the provider was paid)."""
    server = serve(database_url, fake[0])
    try:
        with server.client() as admin:
            admin.post("/api/budgets", json={"entityType": "user", "limitMicrodollars": 10**9})
            admin.post(
                "/api/budgets",
                json={
                    "entityType": "tag",
                    "entityId": f"team={team}",
                    "limitMicrodollars": 100_000,
                },
            ).raise_for_status()
        for stream in (False, True):
            response = post(
                server,
                "/v1/messages",
                {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [], "stream": stream},
                **{"X-NullSpend-Tags": json.dumps({"team": team})},
            )
            assert response.status_code == 200, response.text
            assert response.headers["X-NullSpend-Budget-Entity"] == entity_header
            assert response.headers["X-NullSpend-Budget-Limit"] == "100000"
            remaining = int(response.headers["X-NullSpend-Budget-Remaining"])
            assert 0 < remaining < 100_000
    finally:
        server.stop()


def test_utf8_attribution_headers_are_read_as_sent(
    database_url: str, fake: tuple[str, Any]
) -> None:
    """Clients (curl, Go, Node, Java) send a non-ASCII header value as UTF-8 bytes; read as
    latin-1 they became other text, and a tag escaped its tag budget. Headers forwarded to the
    provider keep their bytes too."""
    server = serve(database_url, fake[0])
    try:
        with server.client() as admin:
            admin.post(
                "/api/budgets",
                json={"entityType": "tag", "entityId": "team=café", "limitMicrodollars": 10**9},
            ).raise_for_status()
        response = httpx.post(
            f"{server.base_url}/v1/messages",
            json={"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []},
            headers={
                "X-NullSpend-Key": server.admin_key,
                "X-NullSpend-Tags": json.dumps({"team": "café"}, ensure_ascii=False).encode(),
                "X-NullSpend-Session": "sesión-1".encode(),
                "x-title": "naïve".encode(),
            },
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert "X-NullSpend-Warning" not in response.headers
        assert response.headers["X-NullSpend-Budget-Entity"] == "tag:team=caf%C3%A9"
        # the echo is the client's own bytes
        assert dict(response.headers.raw)[b"x-nullspend-session"] == "sesión-1".encode()
        [event] = events(server)
        assert event["session_id"] == "sesión-1"
        tags = rows(database_url, "SELECT key, value FROM cost_event_tags")
        assert {"key": "team", "value": "café"} in tags
        # Starlette reads header bytes as latin-1: these are the bytes the client sent
        assert fake[1].state.requests[-1]["headers"]["x-title"] == "naïve".encode().decode(
            "latin-1"
        )
    finally:
        server.stop()


def test_stream_costs_are_exact_for_reasoning_and_long_context(
    database_url: str, fake: tuple[str, Any]
) -> None:
    server = start_server(database_url, openai_upstream=fake[0], anthropic_upstream=fake[0])
    try:
        reasoning = {"input": 2_000, "cached": 0, "output": 9_000, "reasoning": 8_000}
        client = openai.OpenAI(
            base_url=f"{server.base_url}/v1",
            api_key="sk",
            max_retries=0,
            default_headers={
                "X-NullSpend-Key": server.admin_key,
                "x-fake-usage": json.dumps(reasoning),
            },
        )
        list(client.chat.completions.create(model="o3", messages=[], stream=True))
        long = {"input": 150_000, "cached": 60_000, "output": 1_000, "cache_write": 0}
        httpx.post(
            f"{server.base_url}/v1/messages",
            headers={"X-NullSpend-Key": server.admin_key, "x-fake-usage": json.dumps(long)},
            json={
                "model": "claude-sonnet-4-5-20250929",
                "max_tokens": 10,
                "stream": True,
                "messages": [],
            },
            timeout=30,
        )
        costs = [e["cost_microdollars"] for e in events(server)]
        reasoning_row = events(server)[0]
    finally:
        server.stop()
    # o3: 2000 x $2 + 9000 x $8 per million; reasoning is inside the output
    assert costs[0] == 2_000 * 2 + 9_000 * 8
    assert reasoning_row["reasoning_tokens"] == 8_000
    # sonnet 4.5 above 200k prompt tokens (cache reads count): $6 input, $0.60 read, $22.50 out
    assert costs[1] == 150_000 * 6 + int(60_000 * 0.6) + int(1_000 * 22.5)


def test_sqlite_failing_fails_closed(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    fake: tuple[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine's direct SQLite path fails (an I/O error): 503, nothing forwarded."""
    sqlite_url = next(fresh_database("sqlite", tmp_path, request))
    server = serve(sqlite_url, fake[0])
    message = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": []}
    try:
        assert post(server, "/v1/messages", message).status_code == 200

        async def broken(*_: Any) -> Any:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(DirectSQLite, "execute", broken)
        assert_failed_closed(post(server, "/v1/messages", message), fake)
    finally:
        monkeypatch.undo()
        server.stop()
