import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nullspend.errors import PricingFileError
from nullspend.pricing import cost, default_catalog, load_catalog, shipped_catalog
from nullspend.usage import Usage

USAGE = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


def write(tmp_path: Path, models: list[dict[str, object]]) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"schema_version": 1, "models": models}))
    return path


def test_negotiated_price_replaces_the_shipped_one(tmp_path: Path) -> None:
    path = write(tmp_path, [{"id": "gpt-4o", "prices": {"input": "2", "output": "8"}}])
    catalog = load_catalog(path)
    assert cost(USAGE, "gpt-4o", catalog).total_microdollars == 10_000_000
    # aliases and the rest of the entry survive; only what the override says changes
    assert cost(USAGE, "gpt-4o-2024-08-06", catalog).total_microdollars == 10_000_000
    assert (
        catalog.resolve("gpt-4o").max_output_tokens
        == shipped_catalog()
        .resolve(  # type: ignore[union-attr]
            "gpt-4o"
        )
        .max_output_tokens
    )  # type: ignore[union-attr]
    # the shipped catalog itself is untouched
    assert cost(USAGE, "gpt-4o").total_microdollars == 12_500_000


def test_override_by_alias_reprices_the_canonical_model(tmp_path: Path) -> None:
    path = write(tmp_path, [{"id": "claude-sonnet-4", "prices": {"input": "1", "output": "1"}}])
    catalog = load_catalog(path)
    short = Usage(input_tokens=100_000, output_tokens=100_000)
    assert cost(short, "claude-sonnet-4-20250514", catalog).total_microdollars == 200_000
    # tiers the override does not mention are kept: above 200k prompt tokens, list tier prices
    long = Usage(input_tokens=200_001)
    assert cost(long, "claude-sonnet-4", catalog).total_microdollars == 200_001 * 6


def test_override_can_replace_or_drop_tiers(tmp_path: Path) -> None:
    path = write(
        tmp_path, [{"id": "claude-sonnet-4", "prices": {"input": "1", "output": "1"}, "tiers": []}]
    )
    assert (
        cost(Usage(input_tokens=200_001), "claude-sonnet-4", load_catalog(path)).tier_threshold
        is None
    )


def test_override_can_price_a_service_tier(tmp_path: Path) -> None:
    """A negotiated priority rate replaces the shipped one; the standard price is untouched."""
    tiers = {"priority": {"prices": {"input": "2", "output": "16"}}}
    path = write(
        tmp_path,
        [{"id": "gpt-5", "prices": {"input": "1", "output": "8"}, "service_tiers": tiers}],
    )
    catalog = load_catalog(path)
    assert cost(USAGE, "gpt-5", catalog).total_microdollars == 9_000_000
    assert cost(USAGE, "gpt-5", catalog, service_tier="priority").total_microdollars == 18_000_000
    # The override's service tiers replace the shipped ones: flex is no longer priced apart.
    assert cost(USAGE, "gpt-5", catalog, service_tier="flex").total_microdollars == 9_000_000


def test_a_service_tier_priced_at_one_length_pays_at_least_the_long_context_price(
    tmp_path: Path,
) -> None:
    """A tier with no long-context prices of its own, on a model that has them: above the
    threshold each price is the higher of the tier's and the standard long-context one
    (gpt-5.5 above 272k tokens: $10 input, $45 output), never one nobody published."""
    tiers = {"priority": {"prices": {"input": "6", "output": "40"}}}
    catalog = load_catalog(write(tmp_path, [{"id": "gpt-5.5", "service_tiers": tiers}]))
    for prompt, microdollars in ((100_000, 1_000_000), (300_000, 3_450_000)):
        usage = Usage(input_tokens=prompt, output_tokens=10_000)
        priced = cost(usage, "gpt-5.5", catalog, service_tier="priority")
        assert priced.total_microdollars == microdollars
    # A price the standard long-context tier leaves out is its fallback (cache reads at its
    # $10 input), not the tier's short-prompt one ($0.20).
    private = {
        "id": "acme-long",
        "provider": "openai",
        "prices": {"input": "1", "output": "2", "cache_read": "0.1"},
        "tiers": [{"above_prompt_tokens": 1000, "prices": {"input": "10", "output": "20"}}],
        "service_tiers": {
            "priority": {"prices": {"input": "2", "output": "4", "cache_read": "0.2"}}
        },
    }
    catalog = load_catalog(write(tmp_path, [private]))
    cached = Usage(cache_read_tokens=2_000)
    assert cost(cached, "acme-long", catalog, service_tier="priority").total_microdollars == 20_000


def test_private_model_is_added(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {
                "id": "acme-ft-support-v3",
                "provider": "openai",
                "aliases": ["ft:gpt-4o:acme::v3"],
                "max_output_tokens": 4096,
                "prices": {"input": "3.75", "output": "15"},
            }
        ],
    )
    catalog = load_catalog(path)
    assert cost(USAGE, "ft:gpt-4o:acme::v3", catalog).total_microdollars == 18_750_000
    assert catalog.resolve("acme-ft-support-v3").source == "pricing override file"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a valid pricing file"),
        (json.dumps({"models": [{"id": "new-model", "provider": "openai"}]}), "incomplete"),
        (
            json.dumps(
                {
                    "models": [
                        {"id": "x", "prices": {"input": "-1", "output": "1"}, "provider": "openai"}
                    ]
                }
            ),
            "negative",
        ),
        (json.dumps({"models": [{"id": "gpt-4o", "pricez": {}}]}), "not a valid pricing file"),
        (json.dumps({"models": [{"id": "gpt-4o", "aliases": ["o3"]}]}), "already a name"),
    ],
)
def test_bad_override_files_fail_clearly(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "prices.json"
    path.write_text(content)
    with pytest.raises(PricingFileError, match=message):
        load_catalog(path)


def test_missing_override_file(tmp_path: Path) -> None:
    with pytest.raises(PricingFileError, match="cannot read"):
        load_catalog(tmp_path / "absent.json")


@pytest.fixture
def fresh_default_catalog() -> Iterator[None]:
    default_catalog.cache_clear()
    yield
    default_catalog.cache_clear()


@pytest.mark.usefixtures("fresh_default_catalog")
def test_settings_name_the_override_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, [{"id": "gpt-4o", "prices": {"input": "1", "output": "1"}}])
    monkeypatch.setenv("NULLSPEND_PRICING_FILE", str(path))
    assert cost(USAGE, "gpt-4o").total_microdollars == 2_000_000
