"""Sign-in attempts per client: each one costs a Deribit connection and credits, so a flood of
them (wrong secrets, say) must not starve everyone else's calls to Deribit."""

import time
from collections import OrderedDict

from cryptomarket.core.errors import TooMany
from cryptomarket.deribit.credits import TokenBucket

MAX_TRACKED = 10_000  # clients remembered; the least recently seen is forgotten first


class AttemptLimiter:
    def __init__(self, *, burst: int = 5, per_minute: float = 10.0) -> None:
        self.burst = burst
        self.per_second = per_minute / 60
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, *keys: str) -> None:
        """Spend one attempt for each key (client address, API key id); 429 when any is out."""
        buckets = [self._bucket(key) for key in keys]
        waits = [bucket.wait_time(1) for bucket in buckets]
        if any(waits):
            raise TooMany(
                f"too many sign-in attempts; try again in {max(waits):.0f} s",
                code="too_many_attempts",
            )
        for bucket in buckets:
            bucket.try_take(1)

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.burst, self.per_second, time.monotonic)
        self._buckets[key] = bucket
        while len(self._buckets) > MAX_TRACKED:
            self._buckets.popitem(last=False)
        return bucket
