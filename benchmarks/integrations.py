"""Time the LangChain handler adds to a call, as a ratio against the same call without it, in
one run: a fake chat model (no network) that reports a priced model and its usage the way
provider models do, so only the handler's own work is measured, pricing included.

    uv run python benchmarks/integrations.py [--calls 3000]

Embedded mode: the handler enforces a total budget in-process (``LocalNullSpend``, spend in
memory, and again with spend in a SQLite file).
Server mode: it reserves and settles over HTTP with a NullSpend server on this machine (its own
process, SQLite), two round trips per call. Goal for embedded mode: at most 5 % and 50 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_openai import ChatOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nullspend.client import NullSpend
from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend_langchain import NullSpendCallbackHandler
from nullspend_server.db.migrate import migrate
from tests.nullspend_server.conftest import _bootstrap, spawn_server

ROUNDS = 15
PAUSE = 0.01  # between spaced calls, untimed


class FakePricedChat(BaseChatModel):
    """Answers at once (``ainvoke`` after a random wait of up to ``most_wait`` seconds, when
    set), with the usage metadata and model name a provider's chat model sets."""

    model_name: str = "gpt-4o-mini"
    most_wait: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "fake-priced-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = AIMessage(
            content="Hello back",
            usage_metadata={"input_tokens": 9, "output_tokens": 3, "total_tokens": 12},
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.most_wait:
            await asyncio.sleep(random.random() * self.most_wait)
        return self._generate(messages, stop)


class DoNothing(BaseCallbackHandler):
    """What LangChain's callback machinery costs a handler that does nothing: the floor. Run on
    the event loop, as the NullSpend handler in embedded mode (otherwise LangChain hops each
    callback of a sync handler to a thread, which costs several times the rest)."""

    run_inline = True

    def on_chat_model_start(self, *args: object, **kwargs: object) -> None:
        pass

    def on_llm_end(self, *args: object, **kwargs: object) -> None:
        pass


Batch = Callable[[dict[str, Any], int], float]
"""Makes ``n`` calls under a config and answers the microseconds per call."""


def invoking(model: BaseChatModel) -> Batch:
    def batch(config: dict[str, Any], n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            model.invoke("Hello", config=config)  # type: ignore[arg-type]
        return (time.perf_counter() - start) / n * 1e6

    return batch


def spaced(model: BaseChatModel, pause: float) -> Batch:
    """``invoke`` with a pause after each call, untimed: calls as a real provider's wait spaces
    them, so work left to a background thread has done before the next call."""

    def batch(config: dict[str, Any], n: int) -> float:
        total = 0.0
        for _ in range(n):
            start = time.perf_counter()
            model.invoke("Hello", config=config)  # type: ignore[arg-type]
            total += time.perf_counter() - start
            time.sleep(pause)
        return total / n * 1e6

    return batch


def ainvoking(model: BaseChatModel) -> Batch:
    def batch(config: dict[str, Any], n: int) -> float:
        async def calls() -> float:
            start = time.perf_counter()
            for _ in range(n):
                await model.ainvoke("Hello", config=config)  # type: ignore[arg-type]
            return (time.perf_counter() - start) / n * 1e6

        return asyncio.run(calls())

    return batch


def openai_answered_in_process() -> ChatOpenAI:
    """The real ChatOpenAI and openai SDK, the provider's answer made in-process by an httpx
    transport: a real client's own work per call, without a network."""
    answer = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_763_800_000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": "Hello back", "refusal": None},
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    return ChatOpenAI(
        model="gpt-4o-mini",
        api_key="sk-bench",  # type: ignore[arg-type]
        http_client=httpx.Client(transport=transport),
        http_async_client=httpx.AsyncClient(transport=transport),
    )


def best_per_call(batch: Batch, calls: int, configs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Microseconds per call under each config: the configs take turns batch by batch (so a
    slow spell of this shared machine hits them all alike) and each keeps its best."""
    batch({}, 50)  # warm-up
    best = dict.fromkeys(configs, float("inf"))
    for _ in range(ROUNDS):
        for name, config in configs.items():
            best[name] = min(best[name], batch(config, calls // ROUNDS))
    return best


def row(label: str, micros: float, baseline: float) -> str:
    if micros == baseline:
        return f"| {label} | {micros:,.0f} | - | 1.00 |"
    return f"| {label} | {micros:,.0f} | {micros - baseline:,.0f} | {micros / baseline:.2f} |"


def table(title: str, rows: list[tuple[str, float]]) -> None:
    """The first row is the baseline the others are compared with."""
    print(f"\n| {title} | µs per call | added µs | ratio |\n|---|---:|---:|---:|")
    for label, micros in rows:
        print(row(label, micros, rows[0][1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=3000)
    calls = parser.parse_args().calls
    fake = FakePricedChat()
    # A $1,000,000 cap: every call is checked against it and counted in it, never refused.
    capped = LocalNullSpend([LocalBudget.total(1_000_000_000_000)])
    embedded = {"callbacks": [NullSpendCallbackHandler(client=capped)]}
    spend_dir = tempfile.TemporaryDirectory()
    on_file = LocalNullSpend(
        [LocalBudget.total(1_000_000_000_000)], path=f"{spend_dir.name}/spend.db"
    )
    in_process: dict[str, dict[str, Any]] = {
        "none": {},
        "nothing": {"callbacks": [DoNothing()]},
        "embedded": embedded,
        "file": {"callbacks": [NullSpendCallbackHandler(client=on_file)]},
    }
    fake_sync = best_per_call(invoking(fake), calls, in_process)
    fake_async = best_per_call(ainvoking(fake), calls, in_process)
    openai = openai_answered_in_process()
    openai_sync = best_per_call(invoking(openai), calls // 3, in_process)
    on_file.close()
    spend_dir.cleanup()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        key = asyncio.run(_bootstrap(url))
        server, base = spawn_server(url, rate_limit_per_minute=str(10**9))
        try:
            with NullSpend(key, base) as ns:
                remote = {
                    "none": {},
                    "server": {"callbacks": [NullSpendCallbackHandler(client=ns)]},
                }
                server_sync = best_per_call(invoking(fake), calls // 10, remote)
                server_spaced = best_per_call(spaced(fake, PAUSE), calls // 10, remote)
                recorded = len(ns.cost_events(limit=200).data)
        finally:
            server.terminate()
            server.wait(10)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {calls} calls per measure ({calls // 3} through "
        f"ChatOpenAI, {calls // 10} in server mode), in {ROUNDS} interleaved rounds, best round"
    )
    for title, run in (
        ("invoke, fake chat model", fake_sync),
        ("ainvoke, fake chat model", fake_async),
    ):
        table(
            title,
            [
                ("no handler", run["none"]),
                ("a handler that does nothing", run["nothing"]),
                ("NullSpend handler, embedded mode", run["embedded"]),
                ("NullSpend handler, embedded mode, spend in a SQLite file", run["file"]),
            ],
        )
    table(
        "invoke, ChatOpenAI answered in-process",
        [
            ("no handler", openai_sync["none"]),
            ("a handler that does nothing", openai_sync["nothing"]),
            ("NullSpend handler, embedded mode", openai_sync["embedded"]),
            ("NullSpend handler, embedded mode, spend in a SQLite file", openai_sync["file"]),
        ],
    )
    table(
        "invoke, fake chat model, server mode, back to back",
        [
            ("no handler", server_sync["none"]),
            ("NullSpend handler, server mode", server_sync["server"]),
        ],
    )
    table(
        f"invoke, fake chat model, server mode, calls {PAUSE * 1000:.0f} ms apart",
        [
            ("no handler", server_spaced["none"]),
            ("NullSpend handler, server mode", server_spaced["server"]),
        ],
    )
    print(f"\n(the server recorded at least {recorded} cost events)")


if __name__ == "__main__":
    main()
