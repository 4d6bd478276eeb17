"""A fake OpenAI and Anthropic API that speaks their exact wire formats (JSON and SSE), for
testing the proxy without a network. The shapes follow the official SDKs' types (the fixtures in
tests/nullspend/fixtures are validated against them).

Per request, through headers the proxy forwards untouched:
- ``x-fake-usage``: JSON ``{"input", "cached", "output", "reasoning", "cache_write"}``; for
  OpenAI ``input`` is the prompt total (cached included), for Anthropic the uncached input.
  Anthropic only: ``cache_write_1h`` (how much of ``cache_write`` has the 1-hour lifetime).
  ``web_searches``: server-side web searches, each a ``server_tool_use`` and a
  ``web_search_tool_result`` block before an Anthropic answer (counted in its
  ``server_tool_use``), or a ``web_search_call`` item before a completed Responses answer.
- ``x-fake-fault``: ``status:<code>`` (the provider's error body), ``hang`` (never answer),
  ``drop-after:<n>`` (stream n events, then break the connection), ``no-usage`` (a complete
  stream without usage), ``slow:<ms>`` (pause before each stream event), ``output-only-delta``
  (an Anthropic stream whose last ``message_delta`` counts output tokens only),
  ``finish:<reason>`` (a Chat Completions answer with that ``finish_reason``, e.g. ``length``).
- ``x-fake-tool-call``: JSON ``{"name", "arguments"}``: answer with that tool call (Chat
  Completions and Messages, streamed or not) unless the conversation ends with a tool's result,
  which is answered with text: an agent's tool round trip.
- ``x-fake-answer``: the text of a Responses or a (non-streamed) Messages answer (a
  structured output's JSON, say).
- ``x-fake-iterations``: JSON list of ``{"type", "input", "output", "cached", "cache_write",
  "model"}`` (counts default to 0, ``model`` only where the type carries one): an Anthropic
  answer's ``usage.iterations`` (as ``BetaUsage`` and, streamed, the last ``message_delta``'s
  ``BetaMessageDeltaUsage`` carry it), these entries (``compaction``, ``advisor_message``,
  ``fallback_message``...) then a ``message`` entry of ``x-fake-usage``'s counts: the
  top-level counts are left as ``x-fake-usage`` says, as the API leaves out compaction and
  advisor tokens.
- ``x-fake-gzip``: ``accepted`` (gzip the answer, streams too, event by event, when the request
  accepts gzip, as Anthropic's API and many gateways do) or ``always`` (whatever it accepts).
``POST /v1/embeddings`` answers one vector per input (base64 when asked, as the SDK does), and
any path not served answers the provider's 404.
An OpenAI answer's ``service_tier`` is the one its request asked for ("priority" for "fast"),
else "default", as OpenAI answers a project without a default tier.
Every request received is recorded in ``app.state.requests``.
"""

from __future__ import annotations

import array
import asyncio
import base64
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.threaded import serve_in_thread

DEFAULT_USAGE = {
    "input": 12,
    "cached": 0,
    "output": 9,
    "reasoning": 0,
    "cache_write": 0,
    "cache_write_1h": 0,
    "web_searches": 0,
}
WORDS = ["Hello", " there", "! 世界", " 🚀"]
CREATED = 1_763_800_000


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class Scenario:
    def __init__(self, request: Request, body: dict[str, Any]) -> None:
        self.usage = {**DEFAULT_USAGE, **json.loads(request.headers.get("x-fake-usage", "{}"))}
        self.fault = request.headers.get("x-fake-fault", "")
        self.model = body.get("model", "unknown")
        self.stream = body.get("stream") is True
        self.body = body
        self.answer = request.headers.get("x-fake-answer") or "".join(WORDS)
        asked = body.get("service_tier")
        self.service_tier = {"fast": "priority", "priority": "priority", "flex": "flex"}.get(
            asked if isinstance(asked, str) else "", "default"
        )
        self.iterations: list[dict[str, Any]] | None = (
            json.loads(request.headers["x-fake-iterations"])
            if "x-fake-iterations" in request.headers
            else None
        )
        wanted = request.headers.get("x-fake-tool-call")
        self.tool_call: dict[str, Any] | None = (
            json.loads(wanted) if wanted and not _ends_with_tool_result(body) else None
        )

    def fault_value(self, name: str) -> str | None:
        return self.fault.split(":", 1)[1] if self.fault.startswith(f"{name}:") else None


def _ends_with_tool_result(body: dict[str, Any]) -> bool:
    """Whether the last message is a tool's result: OpenAI's ``role: tool``, Anthropic's
    ``tool_result`` block."""
    last = (body.get("messages") or [{}])[-1]
    content = last.get("content")
    blocks = content if isinstance(content, list) else []
    return last.get("role") == "tool" or any(b.get("type") == "tool_result" for b in blocks)


def _argument_pieces(arguments: dict[str, Any]) -> list[str]:
    """A tool call's JSON arguments in two pieces, as a stream delivers them."""
    text = _compact(arguments)
    return [text[: len(text) // 2], text[len(text) // 2 :]]


TOOL_CALL_ID = "call_fake"


async def _events(scenario: Scenario, events: list[str]) -> AsyncIterator[bytes]:
    slow = scenario.fault_value("slow")
    drop = scenario.fault_value("drop-after")
    for index, event in enumerate(events):
        if drop is not None and index >= int(drop):
            raise ConnectionAbortedError("fake upstream broke off the stream")
        if slow is not None:
            await asyncio.sleep(int(slow) / 1000)
        yield event.encode()


def _sse(scenario: Scenario, events: list[str]) -> StreamingResponse:
    return StreamingResponse(_events(scenario, events), media_type="text/event-stream")


# --- OpenAI Chat Completions ---------------------------------------------------------------


def _chat_usage(u: dict[str, int]) -> dict[str, Any]:
    return {
        "prompt_tokens": u["input"],
        "completion_tokens": u["output"],
        "total_tokens": u["input"] + u["output"],
        "prompt_tokens_details": {"cached_tokens": u["cached"], "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u["reasoning"],
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_message(tool_call: dict[str, Any] | None) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if tool_call else "".join(WORDS),
        "refusal": None,
        "annotations": [],
    }
    if tool_call:
        message["tool_calls"] = [
            {
                "id": TOOL_CALL_ID,
                "type": "function",
                "function": {
                    "name": tool_call["name"],
                    "arguments": _compact(tool_call["arguments"]),
                },
            }
        ]
    return message


def chat(s: Scenario) -> Response:
    if not s.stream:
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": CREATED,
                "model": s.model,
                "service_tier": s.service_tier,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": s.fault_value("finish")
                        or ("tool_calls" if s.tool_call else "stop"),
                        "logprobs": None,
                        "message": _chat_message(s.tool_call),
                    }
                ],
                "usage": _chat_usage(s.usage),
            }
        )
    options = s.body.get("stream_options") or {}
    with_usage = bool(options.get("include_usage")) and s.fault != "no-usage"
    head = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": s.model,
        "service_tier": s.service_tier,
        "system_fingerprint": "fp_fake",
    }

    def chunk(choices: list[Any], usage: Any = None) -> str:
        # with include_usage, OpenAI puts "usage":null in every chunk but the last
        tail = {"usage": usage} if with_usage else {}
        return f"data: {_compact({**head, 'choices': choices, **tail})}\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None) -> list[Any]:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    if s.tool_call:
        opening = {"index": 0, "id": TOOL_CALL_ID, "type": "function"}
        first = {**opening, "function": {"name": s.tool_call["name"], "arguments": ""}}
        events = [chunk(choice({"role": "assistant", "content": None, "tool_calls": [first]}))]
        events += [
            chunk(choice({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            for piece in _argument_pieces(s.tool_call["arguments"])
        ]
        events.append(chunk(choice({}, "tool_calls")))
    else:
        events = [chunk(choice({"role": "assistant", "content": "", "refusal": None}))]
        events += [chunk(choice({"content": word})) for word in WORDS]
        events.append(chunk(choice({}, "stop")))
    if with_usage:
        events.append(chunk([], _chat_usage(s.usage)))
    events.append("data: [DONE]\n\n")
    return _sse(s, events)


# --- OpenAI Responses ----------------------------------------------------------------------


def _response(s: Scenario, status: str, with_usage: bool) -> dict[str, Any]:
    u = s.usage
    return {
        "id": "resp_fake",
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "model": s.model,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "parallel_tool_calls": True,
        "service_tier": s.service_tier,
        "temperature": 1.0,
        "top_p": 1.0,
        "tool_choice": "auto",
        "tools": [],
        "output": []
        if status != "completed"
        else [
            *_web_search_calls(s),
            {
                "type": "message",
                "id": "msg_fake",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": s.answer, "annotations": []}],
            },
        ],
        "usage": {
            "input_tokens": u["input"],
            "input_tokens_details": {
                "cached_tokens": u["cached"],
                "cache_write_tokens": u["cache_write"],
            },
            "output_tokens": u["output"],
            "output_tokens_details": {"reasoning_tokens": u["reasoning"]},
            "total_tokens": u["input"] + u["output"],
        }
        if with_usage
        else None,
    }


def compact(s: Scenario) -> Response:
    """``POST /v1/responses/compact``: a ``CompactedResponse``, billed as a response (its usage;
    it names no model)."""
    return JSONResponse(
        {
            "id": "cmp_fake",
            "object": "response.compaction",
            "created_at": CREATED,
            "output": [
                {"type": "compaction", "id": "cmp_item_fake", "encrypted_content": "ZmFrZQ=="}
            ],
            "usage": _response(s, "completed", True)["usage"],
        }
    )


def _web_search_calls(s: Scenario) -> list[dict[str, Any]]:
    """A Responses answer's web searches, output items before its message."""
    return [
        {
            "type": "web_search_call",
            "id": f"ws_fake{n}",
            "status": "completed",
            "action": {"type": "search", "query": SEARCH["query"]},
        }
        for n in range(s.usage["web_searches"])
    ]


def responses(s: Scenario) -> Response:
    if not s.stream:
        return JSONResponse(_response(s, "completed", True))
    events = [("response.created", {"response": _response(s, "in_progress", False)})]
    for index, search in enumerate(_web_search_calls(s)):
        started = {**search, "status": "in_progress"}
        events.append(("response.output_item.added", {"output_index": index, "item": started}))
        events.append(("response.output_item.done", {"output_index": index, "item": search}))
    # The answer's message, as the SDK's stream helpers build it up: the item, its text part,
    # the text's deltas, then each done.
    at = {"item_id": "msg_fake", "output_index": s.usage["web_searches"], "content_index": 0}
    message = _response(s, "completed", True)["output"][-1]
    part = message["content"][0]
    events += [
        (
            "response.output_item.added",
            {
                "output_index": at["output_index"],
                "item": {**message, "status": "in_progress", "content": []},
            },
        ),
        ("response.content_part.added", {**at, "part": {**part, "text": ""}}),
        *(("response.output_text.delta", {**at, "delta": w, "logprobs": []}) for w in WORDS),
        ("response.output_text.done", {**at, "text": part["text"], "logprobs": []}),
        ("response.content_part.done", {**at, "part": part}),
        ("response.output_item.done", {"output_index": at["output_index"], "item": message}),
    ]
    events.append(
        ("response.completed", {"response": _response(s, "completed", s.fault != "no-usage")})
    )
    return _sse(
        s,
        [
            f"event: {kind}\ndata: {_compact({'type': kind, 'sequence_number': n, **data})}\n\n"
            for n, (kind, data) in enumerate(events)
        ],
    )


# --- Anthropic Messages --------------------------------------------------------------------


def _message_usage(u: dict[str, int], output: int) -> dict[str, Any]:
    return {
        "input_tokens": u["input"],
        "cache_read_input_tokens": u["cached"],
        "cache_creation_input_tokens": u["cache_write"],
        "output_tokens": output,
        "cache_creation": {
            "ephemeral_5m_input_tokens": u["cache_write"] - u["cache_write_1h"],
            "ephemeral_1h_input_tokens": u["cache_write_1h"],
        },
        "service_tier": "standard",
        **_server_tool_use(u),
    }


def _iterations(s: Scenario) -> dict[str, Any]:
    """``usage.iterations`` as ``x-fake-iterations`` asks, in ``BetaIterationsUsage``'s shape."""
    if s.iterations is None:
        return {}
    entries = [*s.iterations, {"type": "message", **{k: s.usage[k] for k in _ITERATION_COUNTS}}]
    return {
        "iterations": [
            {
                "type": entry["type"],
                **({"model": entry["model"]} if "model" in entry else {}),
                "input_tokens": entry.get("input", 0),
                "output_tokens": entry.get("output", 0),
                "cache_read_input_tokens": entry.get("cached", 0),
                "cache_creation_input_tokens": entry.get("cache_write", 0),
                "cache_creation": {
                    "ephemeral_5m_input_tokens": entry.get("cache_write", 0),
                    "ephemeral_1h_input_tokens": 0,
                },
            }
            for entry in entries
        ]
    }


_ITERATION_COUNTS = ("input", "output", "cached", "cache_write")


def _server_tool_use(u: dict[str, int]) -> dict[str, Any]:
    searches = u["web_searches"]
    return (
        {"server_tool_use": {"web_search_requests": searches, "web_fetch_requests": 0}}
        if searches
        else {}
    )


def _web_search_blocks(u: dict[str, int]) -> list[dict[str, Any]]:
    """The server tool's blocks before the answer, one call and its result per search."""
    blocks: list[dict[str, Any]] = []
    for n in range(u["web_searches"]):
        call_id = f"srvtoolu_fake{n}"
        blocks.append(
            {"type": "server_tool_use", "id": call_id, "name": "web_search", "input": SEARCH}
        )
        blocks.append(
            {
                "type": "web_search_tool_result",
                "tool_use_id": call_id,
                "content": [
                    {
                        "type": "web_search_result",
                        "url": "https://example.com/news",
                        "title": "News",
                        "encrypted_content": "ZmFrZQ==",
                        "page_age": None,
                    }
                ],
            }
        )
    return blocks


SEARCH = {"query": "news today"}


def messages(s: Scenario) -> Response:
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": s.model,
        "stop_sequence": None,
    }
    tool = s.tool_call
    stop_reason = "tool_use" if tool else "end_turn"
    if not s.stream:
        block = (
            {
                "type": "tool_use",
                "id": TOOL_CALL_ID,
                "name": tool["name"],
                "input": tool["arguments"],
            }
            if tool
            else {"type": "text", "text": s.answer}
        )
        return JSONResponse(
            {
                **message,
                "content": [*_web_search_blocks(s.usage), block],
                "stop_reason": stop_reason,
                "usage": {**_message_usage(s.usage, s.usage["output"]), **_iterations(s)},
            }
        )
    no_usage = s.fault == "no-usage"
    start = {**message, "content": [], "stop_reason": None, "usage": _message_usage(s.usage, 1)}
    delta: dict[str, Any] = {"delta": {"stop_reason": stop_reason, "stop_sequence": None}}
    if s.fault == "output-only-delta":  # as the API did before mid-2025, and some gateways do
        delta["usage"] = {"output_tokens": s.usage["output"]}
    elif not no_usage:  # today's API restates every count, cumulative, in the last delta
        delta["usage"] = {
            "input_tokens": s.usage["input"],
            "cache_creation_input_tokens": s.usage["cache_write"],
            "cache_read_input_tokens": s.usage["cached"],
            "output_tokens": s.usage["output"],
            **_server_tool_use(s.usage),
            **_iterations(s),
        }
    if tool:
        opening = {"type": "tool_use", "id": TOOL_CALL_ID, "name": tool["name"], "input": {}}
        deltas = [
            {"type": "input_json_delta", "partial_json": piece}
            for piece in _argument_pieces(tool["arguments"])
        ]
    else:
        opening = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in WORDS]
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"message": start})]
    for index, block in enumerate(_web_search_blocks(s.usage)):
        if block["type"] == "server_tool_use":  # its input streams as JSON, as a tool call's
            events.append(
                ("content_block_start", {"index": index, "content_block": {**block, "input": {}}})
            )
            piece = {"type": "input_json_delta", "partial_json": _compact(block["input"])}
            events.append(("content_block_delta", {"index": index, "delta": piece}))
        else:
            events.append(("content_block_start", {"index": index, "content_block": block}))
        events.append(("content_block_stop", {"index": index}))
    last = 2 * s.usage["web_searches"]
    events += [("content_block_start", {"index": last, "content_block": opening}), ("ping", {})]
    events += [("content_block_delta", {"index": last, "delta": d}) for d in deltas]
    events += [
        ("content_block_stop", {"index": last}),
        ("message_delta", delta),
        ("message_stop", {}),
    ]
    return _sse(
        s, [f"event: {kind}\ndata: {_compact({'type': kind, **data})}\n\n" for kind, data in events]
    )


# --- the app -------------------------------------------------------------------------------


def embeddings(s: Scenario) -> Response:
    inputs = s.body.get("input")
    count = len(inputs) if isinstance(inputs, list) and not isinstance(inputs[0], int) else 1
    vector = [0.25, -0.5, 1.0]
    encoded: Any = (
        base64.b64encode(array.array("f", vector).tobytes()).decode()
        if s.body.get("encoding_format") == "base64"
        else vector
    )
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encoded} for i in range(count)
            ],
            "model": s.model,
            "usage": {"prompt_tokens": s.usage["input"], "total_tokens": s.usage["input"]},
        }
    )


HANDLERS = {
    "/v1/chat/completions": chat,
    "/v1/responses": responses,
    "/v1/responses/compact": compact,
    "/v1/messages": messages,
    "/v1/embeddings": embeddings,
}


def _error(path: str, status: int) -> JSONResponse:
    if path.startswith("/v1/messages"):
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": "api_error", "message": "fake failure"},
        }
    else:
        body = {
            "error": {
                "message": "fake failure",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        }
    return JSONResponse(body, status_code=status)


async def _handle(request: Request) -> Response:
    raw = await request.body()
    body = json.loads(raw) if raw else {}
    request.app.state.requests.append(
        {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "json": body,
            "raw": raw,
        }
    )
    if request.url.path == "/v1/models":
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": "gpt-4o-mini",
                        "object": "model",
                        "created": CREATED,
                        "owned_by": "openai",
                    }
                ],
            }
        )
    if request.url.path == "/v1/messages/count_tokens":
        return JSONResponse({"input_tokens": 42})
    if request.url.path not in HANDLERS:
        return _error(request.url.path, 404)
    scenario = Scenario(request, body)
    if (status := scenario.fault_value("status")) is not None:
        return _error(request.url.path, int(status))
    if scenario.fault == "hang":
        await asyncio.sleep(3600)
    return _encoded(request, HANDLERS[request.url.path](scenario))


def _encoded(request: Request, response: Response) -> Response:
    """``response`` gzipped as ``x-fake-gzip`` asks; a stream flushed event by event, so a
    decoding client still reads it as it arrives."""
    mode = request.headers.get("x-fake-gzip")
    accepted = "gzip" in request.headers.get("accept-encoding", "")
    if mode != "always" and not (mode == "accepted" and accepted):
        return response
    gzip = zlib.compressobj(wbits=31)
    response.headers["content-encoding"] = "gzip"
    if isinstance(response, StreamingResponse):
        events = response.body_iterator

        async def gzipped() -> AsyncIterator[bytes]:
            async for event in events:
                assert isinstance(event, bytes)
                yield gzip.compress(event) + gzip.flush(zlib.Z_SYNC_FLUSH)
            yield gzip.flush()

        response.body_iterator = gzipped()
        return response
    response.body = gzip.compress(response.body) + gzip.flush()
    response.headers["content-length"] = str(len(response.body))
    return response


def create_app() -> Starlette:
    paths = [*HANDLERS, "/v1/messages/count_tokens"]
    app = Starlette(
        routes=[Route(p, _handle, methods=["POST"]) for p in paths]
        + [
            Route("/v1/models", _handle, methods=["GET"]),
            Route("/{path:path}", _handle, methods=["GET", "POST", "DELETE"]),
        ]
    )
    app.state.requests = []
    return app


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """Serve ``app`` over real HTTP on a free loopback port, in a thread; yields its base URL."""
    server = serve_in_thread(app)
    try:
        yield server.base_url
    finally:
        server.stop()


@contextmanager
def run_fake_upstream() -> Iterator[tuple[str, Starlette]]:
    """Serve a fresh fake upstream over real HTTP on a free loopback port, in a thread."""
    app = create_app()
    with serving(app) as base_url:
        yield base_url, app
