"""What one call may carry, on the server and the in-process engine alike: past these, a value
is refused as invalid rather than stored.

One call's amount (its estimate, its cost, the price of its reported usage) is at most
$1,000,000,000: far below the BIGINT columns, so that the sums a budget keeps (spend, reserved)
stay far from overflowing them (9,223 calls at this most). A call's duration fits the INTEGER
column it is kept in. A read of cost events answers a page of at most 200.
"""

BIGINT_MAX = 2**63 - 1
"""The most a BIGINT column holds: a budget's limit, a token count."""
MAX_CALL_MICRODOLLARS = 10**15
MAX_DURATION_MS = 2**31 - 1
PRICED_ABOVE_A_CALL = f"the usage prices above one call's most, {MAX_CALL_MICRODOLLARS} µ$"
MAX_EVENTS_PAGE = 200
"""The most cost events one read answers (``cost_events(limit=...)``)."""
