"""Time the LangChain handler adds to a call, as a ratio against the same call without it, in
one run: a fake chat model (no network) that reports a priced model and its usage the way
provider models do, so only the handler's own work is measured, pricing included.

    uv run python benchmarks/integrations.py [--calls 2000]

Embedded mode: the handler enforces a budget in-process (``LocalNullSpend``, spend in memory).
Server mode: it reserves and settles over HTTP with a NullSpend server on this machine (its own
process, SQLite), two round trips per call. Goal for embedded mode: at most 5 % and 50 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nullspend.client import NullSpend
from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend_langchain import NullSpendCallbackHandler
from nullspend_server.db.migrate import migrate
from tests.nullspend_server.conftest import _bootstrap, spawn_server

BATCHES = 5


class FakePricedChat(BaseChatModel):
    """Answers at once, with the usage metadata and model name a provider's chat model sets."""

    model_name: str = "gpt-4o-mini"

    @property
    def _llm_type(self) -> str:
        return "fake-priced-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def _generate(
        self, messages: list[BaseMessage], stop: list[str] | None = None, **kwargs: Any
    ) -> ChatResult:
        message = AIMessage(
            content="Hello back",
            usage_metadata={"input_tokens": 9, "output_tokens": 3, "total_tokens": 12},
            response_metadata={"model_name": self.model_name},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


class DoNothing(BaseCallbackHandler):
    """What LangChain's callback machinery costs a handler that does nothing: the floor."""

    def on_chat_model_start(self, *args: object, **kwargs: object) -> None:
        pass

    def on_llm_end(self, *args: object, **kwargs: object) -> None:
        pass


def per_call(model: FakePricedChat, calls: int, config: dict[str, object]) -> float:
    """Microseconds per ``invoke``, best of a few batches (the machine is shared and noisy)."""
    best = float("inf")
    for _ in range(BATCHES):
        start = time.perf_counter()
        for _ in range(calls // BATCHES):
            model.invoke("Hello", config=config)  # type: ignore[arg-type]
        best = min(best, (time.perf_counter() - start) / (calls // BATCHES) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=2000)
    calls = parser.parse_args().calls
    model = FakePricedChat()
    local = NullSpendCallbackHandler(client=LocalNullSpend([LocalBudget.total(10**15)]))
    per_call(model, 200, {"callbacks": [local]})  # warm-up
    plain_local = per_call(model, calls, {})
    embedded = per_call(model, calls, {"callbacks": [local]})
    nothing = per_call(model, calls, {"callbacks": [DoNothing()]})
    plain_local_again = per_call(model, calls, {})
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        migrate(url)
        key = asyncio.run(_bootstrap(url))
        server, base = spawn_server(url, rate_limit_per_minute=str(10**9))
        try:
            with NullSpend(key, base) as ns:
                handler = NullSpendCallbackHandler(client=ns)
                per_call(model, 200, {"callbacks": [handler]})  # warm-up
                plain = per_call(model, calls, {})
                tracked = per_call(model, calls, {"callbacks": [handler]})
                plain_again = per_call(model, calls, {})
                recorded = len(ns.cost_events(limit=200).data)
        finally:
            server.terminate()
            server.wait(10)
    baseline = statistics.mean([plain, plain_again])
    baseline_local = statistics.mean([plain_local, plain_local_again])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {calls} calls per measure, best of {BATCHES} batches\n"
    )
    print("| LangChain invoke, fake chat model | µs per call | added µs | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| no handler | {baseline_local:,.0f} | - | 1.00 |")
    print(
        f"| a handler that does nothing | {nothing:,.0f} "
        f"| {nothing - baseline_local:,.0f} | {nothing / baseline_local:.2f} |"
    )
    print(
        f"| NullSpend handler, embedded mode | {embedded:,.0f} "
        f"| {embedded - baseline_local:,.0f} | {embedded / baseline_local:.2f} |"
    )
    print(f"| no handler (again, beside server mode) | {baseline:,.0f} | - | 1.00 |")
    print(
        f"| NullSpend handler, server mode (reserve + settle over HTTP) | {tracked:,.0f} "
        f"| {tracked - baseline:,.0f} | {tracked / baseline:.2f} |"
    )
    print(f"\n(the server recorded at least {recorded} cost events)")


if __name__ == "__main__":
    main()
