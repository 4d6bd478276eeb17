from decimal import Decimal

import pytest

from nullspend.money import (
    dollars_per_million_to_picodollars_per_token,
    dollars_per_thousand_to_picodollars_per_unit,
    format_microdollars,
    picodollars_to_microdollars,
)


@pytest.mark.parametrize(
    ("picodollars", "microdollars"),
    [
        (0, 0),
        (499_999, 0),
        (500_000, 1),  # half rounds up
        (1_499_999, 1),
        (1_500_000, 2),
        (2_500_000, 3),  # half up, not half to even
        (-500_000, -1),
        (-499_999, 0),
        (10**30 + 500_000, 10**24 + 1),  # no float anywhere: exact at any size
    ],
)
def test_rounds_once_half_up(picodollars: int, microdollars: int) -> None:
    assert picodollars_to_microdollars(picodollars) == microdollars


@pytest.mark.parametrize(
    ("price", "per_token"),
    [("3", 3_000_000), ("0.075", 75_000), ("0.000001", 1), (Decimal("22.50"), 22_500_000)],
)
def test_price_per_million_is_exact_picodollars_per_token(price: str, per_token: int) -> None:
    assert dollars_per_million_to_picodollars_per_token(price) == per_token


@pytest.mark.parametrize("price", ["0.0000001", "-1", "1e-9"])
def test_inexact_or_negative_prices_are_refused(price: str) -> None:
    with pytest.raises(ValueError, match="price"):
        dollars_per_million_to_picodollars_per_token(price)


def test_web_search_price_per_thousand() -> None:
    # $10 per 1,000 searches is one cent, 10,000 microdollars, per search.
    assert dollars_per_thousand_to_picodollars_per_unit("10") == 10_000 * 10**6


def test_format_microdollars() -> None:
    assert format_microdollars(1_234_567) == "$1.234567"
    assert format_microdollars(-5) == "-$0.000005"
