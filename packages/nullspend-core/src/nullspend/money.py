"""Money units. Every amount on the money path is an integer; nothing here touches a float.

Prices are kept in picodollars per token (1 USD = 10**12 pUSD): a price of $X per million tokens
is X microdollars per token, so any catalog price with up to six decimals in $/M is an exact
integer of picodollars per token. Costs are summed in picodollars and rounded once, half up, to
microdollars (1 USD = 10**6 uUSD), the unit of storage, APIs and events.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICRODOLLARS_PER_DOLLAR = 1_000_000
PICODOLLARS_PER_MICRODOLLAR = 1_000_000
PICODOLLARS_PER_DOLLAR = MICRODOLLARS_PER_DOLLAR * PICODOLLARS_PER_MICRODOLLAR
_HALF_MICRODOLLAR = PICODOLLARS_PER_MICRODOLLAR // 2


def picodollars_to_microdollars(picodollars: int) -> int:
    """Round an exact picodollar amount to microdollars, half up (away from zero for halves)."""
    if picodollars >= 0:
        return (picodollars + _HALF_MICRODOLLAR) // PICODOLLARS_PER_MICRODOLLAR
    return -((-picodollars + _HALF_MICRODOLLAR) // PICODOLLARS_PER_MICRODOLLAR)


def _decimal(price: Decimal | str | int) -> Decimal:
    try:
        value = Decimal(price)
    except InvalidOperation:
        raise ValueError(f"a price must be a decimal number: {price!r}") from None
    if not value.is_finite():
        raise ValueError(f"a price must be a finite decimal number: {price!r}")
    return value


def dollars_per_million_to_picodollars_per_token(price: Decimal | str | int) -> int:
    """Convert a catalog price ($ per million tokens) to integer picodollars per token, exactly.

    Raises ValueError for a negative price or one finer than 10**-6 $/M, which could not be
    represented without rounding.
    """
    value = _decimal(price) * MICRODOLLARS_PER_DOLLAR
    if value < 0:
        raise ValueError(f"a price cannot be negative: {price}")
    if value != value.to_integral_value():
        raise ValueError(f"a price must have at most six decimals in $ per million: {price}")
    return int(value)


def dollars_per_thousand_to_picodollars_per_unit(price: Decimal | str | int) -> int:
    """Convert a per-thousand price (web search requests: $ per 1,000) to picodollars per unit."""
    value = _decimal(price) * PICODOLLARS_PER_DOLLAR / 1000
    if value < 0 or value != value.to_integral_value():
        raise ValueError(f"a per-thousand price must be non-negative and exact: {price}")
    return int(value)


def format_microdollars(microdollars: int) -> str:
    """Render microdollars as dollars with six decimals, e.g. 1234567 -> '$1.234567'."""
    sign = "-" if microdollars < 0 else ""
    whole, frac = divmod(abs(microdollars), MICRODOLLARS_PER_DOLLAR)
    return f"{sign}${whole}.{frac:06d}"
