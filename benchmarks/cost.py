"""Cost calculations per second: NullSpend against litellm and genai-prices, one run, same inputs.

    uv sync --group benchmark && uv run python benchmarks/cost.py

Each engine prices the same mixed workload (OpenAI, Anthropic and Gemini models; cache reads and
writes, reasoning, long-context tiers) from usage objects built up front, so that only the
pricing itself is timed, name resolution included. Also reports how many workload items each
competitor prices to the same microdollar as NullSpend.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from importlib.metadata import version

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: use the bundled map

import genai_prices
import litellm

from nullspend.pricing import cost
from nullspend.usage import Usage

# (model, provider, usage): what each engine is asked to price.
WORKLOAD: list[tuple[str, str, Usage]] = [
    ("gpt-4o", "openai", Usage(input_tokens=1_200, cache_read_tokens=3_000, output_tokens=400)),
    ("gpt-4o-mini", "openai", Usage(input_tokens=800, output_tokens=150)),
    ("gpt-4.1", "openai", Usage(input_tokens=5_000, cache_read_tokens=20_000, output_tokens=900)),
    ("gpt-4.1-nano", "openai", Usage(input_tokens=300, output_tokens=60)),
    ("o3", "openai", Usage(input_tokens=2_000, output_tokens=9_000, reasoning_tokens=8_000)),
    ("o4-mini", "openai", Usage(input_tokens=1_500, output_tokens=4_000, reasoning_tokens=3_500)),
    (
        "gpt-5",
        "openai",
        Usage(
            input_tokens=4_000,
            cache_read_tokens=12_000,
            output_tokens=2_500,
            reasoning_tokens=1_800,
        ),
    ),
    ("gpt-5-mini", "openai", Usage(input_tokens=900, output_tokens=700, reasoning_tokens=500)),
    (
        "claude-sonnet-4-5-20250929",
        "anthropic",
        Usage(
            input_tokens=1_000,
            cache_read_tokens=150_000,
            cache_write_5m_tokens=20_000,
            output_tokens=2_000,
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        "anthropic",
        Usage(input_tokens=60_000, cache_read_tokens=150_000, output_tokens=3_000),
    ),
    ("claude-haiku-4-5", "anthropic", Usage(input_tokens=2_000, output_tokens=300)),
    (
        "claude-opus-4-5-20251101",
        "anthropic",
        Usage(input_tokens=500, cache_write_5m_tokens=4_000, output_tokens=1_000),
    ),
    (
        "claude-haiku-4-5-20251001",
        "anthropic",
        Usage(input_tokens=3_000, cache_read_tokens=9_000, output_tokens=500),
    ),
    (
        "gemini-2.5-flash",
        "google",
        Usage(input_tokens=4_000, output_tokens=1_200, reasoning_tokens=700),
    ),
    ("gemini-2.5-pro", "google", Usage(input_tokens=250_000, output_tokens=2_000)),
    ("gemini-2.5-flash-lite", "google", Usage(input_tokens=10_000, output_tokens=500)),
]


LITELLM_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "google": "gemini"}


def prices_everywhere(model: str, provider: str, usage: Usage) -> bool:
    """Whether every engine gives the model a price; a $0 answer counts as no price (litellm
    answers $0 for some models it does not map, which would also flatter its timing)."""
    try:
        prompt, completion = litellm.cost_per_token(
            model=model,
            custom_llm_provider=LITELLM_PROVIDERS[provider],
            prompt_tokens=1000,
            completion_tokens=1000,
        )
        genai = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1000, output_tokens=1000), model, provider_id=provider
        )
        cost(usage, model)
    except Exception:
        return False
    return prompt + completion > 0 and genai.total_price > 0


def prompt_total(u: Usage) -> int:
    return u.input_tokens + u.cache_read_tokens + u.cache_write_5m_tokens + u.cache_write_1h_tokens


def nullspend_engine() -> tuple[Callable[[], object], list[int]]:
    items = [(model, usage) for model, _, usage in WORKLOAD]

    def run() -> None:
        for model, usage in items:
            cost(usage, model).total_microdollars  # noqa: B018

    return run, [cost(usage, model).total_microdollars for model, usage in items]


def litellm_engine() -> tuple[Callable[[], object], list[int]]:
    # litellm takes OpenAI-style counts: the prompt includes cached and cache-written tokens.
    items = [
        dict(
            model=model,
            custom_llm_provider=LITELLM_PROVIDERS[provider],
            prompt_tokens=prompt_total(u),
            completion_tokens=u.output_tokens,
            cache_read_input_tokens=u.cache_read_tokens,
            cache_creation_input_tokens=u.cache_write_5m_tokens,
        )
        for model, provider, u in WORKLOAD
    ]

    def run() -> None:
        for kwargs in items:
            litellm.cost_per_token(**kwargs)

    totals = []
    for kwargs in items:
        prompt, completion = litellm.cost_per_token(**kwargs)
        totals.append(round((prompt + completion) * 1_000_000))
    return run, totals


def genai_prices_engine() -> tuple[Callable[[], object], list[int]]:
    items = [
        (
            genai_prices.Usage(
                input_tokens=prompt_total(u),
                cache_read_tokens=u.cache_read_tokens,
                cache_write_tokens=u.cache_write_5m_tokens,
                output_tokens=u.output_tokens,
            ),
            model,
            provider,
        )
        for model, provider, u in WORKLOAD
    ]

    def run() -> None:
        for usage, model, provider in items:
            genai_prices.calc_price(usage, model, provider_id=provider).total_price  # noqa: B018

    totals = [
        int(
            (
                genai_prices.calc_price(usage, model, provider_id=provider).total_price * 1_000_000
            ).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        )
        for usage, model, provider in items
    ]
    return run, totals


def timed(run: Callable[[], object], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        run()
    return time.perf_counter() - start


def calls_per_second(
    run: Callable[[], object], batch_seconds: float = 0.4, repeats: int = 5
) -> float:
    """Best of ``repeats`` batches, each looping the workload for about ``batch_seconds``."""
    loops = 1
    while (elapsed := timed(run, loops)) < batch_seconds / 4:
        loops *= 2
    loops = max(1, round(loops * batch_seconds / elapsed))
    best = min(timed(run, loops) for _ in range(repeats))
    return loops * len(WORKLOAD) / best


def main() -> None:
    dropped = [item for item in WORKLOAD if not prices_everywhere(*item)]
    WORKLOAD[:] = [item for item in WORKLOAD if item not in dropped]
    engines = {
        "nullspend": nullspend_engine(),
        f"litellm {version('litellm')}": litellm_engine(),
        f"genai-prices {version('genai-prices')}": genai_prices_engine(),
    }
    ours = engines["nullspend"][1]
    rates = {name: calls_per_second(run) for name, (run, _) in engines.items()}
    fastest_other = max(rate for name, rate in rates.items() if name != "nullspend")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}"
    )
    print(f"workload: {len(WORKLOAD)} priced calls, mixed providers")
    for model, _, _ in dropped:
        print(f"  left out (not priced by every engine): {model}")
    print()
    print("| engine | cost calculations / s | µs per calculation | same µ$ as NullSpend |")
    print("|---|---:|---:|---:|")
    for name, (_, totals) in engines.items():
        agree = sum(a == b for a, b in zip(totals, ours, strict=True))
        print(
            f"| {name} | {rates[name]:,.0f} | {1e6 / rates[name]:.2f} | {agree}/{len(WORKLOAD)} |"
        )
    print(
        f"\nNullSpend is {rates['nullspend'] / fastest_other:.1f}x the faster competitor "
        "(goal: at least 30x)."
    )
    for (model, _, _), mine, *others in zip(
        WORKLOAD, ours, *(t for n, (_, t) in engines.items() if n != "nullspend"), strict=True
    ):
        if any(other != mine for other in others):
            print(f"  differs: {model}: nullspend {mine} µ$, others {others}")


if __name__ == "__main__":
    main()
