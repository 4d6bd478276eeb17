"""CPU the LangChain handler adds per call when many calls are in flight at once: agent tasks
that each make calls in turn, the model answering after a random wait, as a provider does.

    uv run python benchmarks/handler_concurrency.py [--agents 600] [--calls 5] [--runs 3]

Embedded mode (``LocalNullSpend`` with a total budget every call is checked against). CPU time
(``process_time``), not wall time: the waits are the model's. Each run measures the calls
without a handler, then with it, and prints the CPU per call of each and their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from integrations import FakePricedChat

from nullspend.embedded import LocalBudget, LocalNullSpend
from nullspend_langchain import NullSpendCallbackHandler

MOST_WAIT = 0.05  # seconds a call waits for its answer, at most


def cpu_per_call(agents: int, calls: int, handler: bool) -> float:
    """Microseconds of CPU per call for ``agents`` tasks each making ``calls`` calls in turn."""
    model = FakePricedChat(most_wait=MOST_WAIT)  # calls overlap, as with a provider
    engine = LocalNullSpend([LocalBudget.total(10**15)])
    config: Any = {"callbacks": [NullSpendCallbackHandler(client=engine)]} if handler else {}

    async def agent() -> None:
        for _ in range(calls):
            await model.ainvoke("Hello", config=config)

    async def fleet() -> None:
        await asyncio.gather(*(agent() for _ in range(agents)))

    start = time.process_time()
    asyncio.run(fleet())
    return (time.process_time() - start) / (agents * calls) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=600)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    random.seed(1)
    print(
        f"{platform.machine()}, Python {platform.python_version()}, {options.agents} agents x "
        f"{options.calls} calls ({options.agents * options.calls} in all)"
    )
    print("| run | no handler, CPU µs per call | NullSpend handler | added |")
    print("|---:|---:|---:|---:|")
    for run in range(1, options.runs + 1):
        without = cpu_per_call(options.agents, options.calls, handler=False)
        with_handler = cpu_per_call(options.agents, options.calls, handler=True)
        print(f"| {run} | {without:,.0f} | {with_handler:,.0f} | {with_handler - without:,.0f} |")


if __name__ == "__main__":
    main()
