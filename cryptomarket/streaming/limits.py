"""Stream opens per user id, limited: every open reads the store (the subscriptions, the latest
prices, a Last-Event-ID replay), so a client reopening in a loop would spend the database and the
event loop everyone's streams share. Only a signed-in caller spends, from its own user id's bucket
(in Redis in distributed mode, so a replica hop does not refill it).
"""

from cryptomarket.core.errors import TooMany
from cryptomarket.kit.buckets import Buckets, LocalBuckets, Rate


class OpenLimiter:
    def __init__(
        self, *, burst: int = 20, per_minute: float = 60.0, buckets: Buckets | None = None
    ) -> None:
        self.rate = Rate(burst, per_minute)
        self.buckets: Buckets = buckets or LocalBuckets()

    async def admit(self, user_id: str) -> None:
        """Spend one open of the user id; 429 with the wait when they are out."""
        wait = await self.buckets.take([(f"opens:{user_id}", self.rate)], [])
        if wait:
            raise TooMany(
                f"user {user_id!r} opened {self.rate.burst} streams in a short time, the most "
                f"allowed (SSE_OPEN_BURST, then SSE_OPENS_PER_MINUTE={self.rate.per_minute:g}); "
                f"try again in {max(wait, 1):.0f} s",
                code="too_many_opens",
                retry_after=wait,
            )
