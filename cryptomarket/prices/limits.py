"""The price routes are public, so what they cost is bounded per client address: a request spends
from its address's bucket in proportion to the rows it may read (a page of 10,000 rows costs
eleven small ones, a CSV export of a whole range twenty), and past the bucket it is 429 with
Retry-After. In distributed mode the buckets live in Redis, so replicas share them.
"""

from cryptomarket.core.errors import TooMany
from cryptomarket.kit.buckets import Buckets, LocalBuckets, Rate
from cryptomarket.users.limits import address_key

ROWS_PER_UNIT = 1_000
EXPORT_COST = 20


def request_cost(limit: str | None, export: bool) -> float:
    """Units a history request spends: one, plus one per thousand rows of its page."""
    if export:
        return EXPORT_COST
    rows = int(limit) if limit is not None and limit.isdigit() and len(limit) <= 6 else 0
    return 1 + rows // ROWS_PER_UNIT


class HistoryLimiter:
    def __init__(
        self, *, burst: int = 120, per_minute: float = 1_200, buckets: Buckets | None = None
    ) -> None:
        self.rate = Rate(burst, per_minute)
        self.buckets: Buckets = buckets or LocalBuckets()

    async def admit(self, address: str, cost: float) -> None:
        bucket = (f"history:{address_key(address)}", self.rate)
        wait = await self.buckets.take([bucket], [], min(cost, self.rate.burst))
        if wait:
            raise TooMany(
                "too many price history requests from this address (HISTORY_BURST, then "
                f"HISTORY_PER_MINUTE={self.rate.per_minute:g} units, a unit per 1000 rows); "
                f"try again in {max(wait, 1):.0f} s",
                code="too_many_history_requests",
                retry_after=wait,
            )
