"""Sign-in attempts, limited so that a flooder exhausts only their own budget.

Each attempt costs a Deribit connection and credits, so every attempt spends from its client
address's bucket. A refused secret also spends from the (address, client_id) bucket, which slows
guessing at one key from one address even where an address is allowed many attempts (a NAT).
Nothing is keyed by client_id alone: anyone may know a Client Id, and a bucket they could empty
would lock its owner out. Guessing is kept off by the secret itself (Deribit's secrets are long
random strings, far beyond any number of attempts a set of addresses can make) and by Deribit's
own limits on `public/auth`; the buckets bound what one address costs everyone else.

In embedded mode the buckets live in this process; in distributed mode they live in Redis
(cryptomarket/distributed/rate_limit.py), so every replica spends from the same ones.
"""

from cryptomarket.core.errors import TooMany
from cryptomarket.kit.addresses import address_key
from cryptomarket.kit.buckets import Bucket, Buckets, LocalBuckets, Rate

# Refused secrets per (client address, client_id).
REFUSALS = Rate(burst=5, per_minute=5.0)


class AttemptLimiter:
    def __init__(
        self,
        *,
        burst: int = 5,
        per_minute: float = 10.0,
        refusals: Rate = REFUSALS,
        buckets: Buckets | None = None,
    ) -> None:
        self.attempts = Rate(burst, per_minute)
        self.refusals = refusals
        self.buckets: Buckets = buckets or LocalBuckets()

    def _keys(self, address: str, client_id: str) -> tuple[Bucket, Bucket]:
        where = address_key(address)
        return (
            (f"address:{where}", self.attempts),
            (f"refused:{where}:{client_id}", self.refusals),
        )

    async def admit(self, address: str, client_id: str) -> None:
        """Spend one attempt of the address; 429 when it or this key's refusals are out."""
        attempt, refused = self._keys(address, client_id)
        wait = await self.buckets.take([attempt], [refused])
        if wait:
            raise TooMany(
                f"too many sign-in attempts from this address; try again in {max(wait, 1):.0f} s",
                code="too_many_attempts",
                retry_after=wait,
            )

    async def refused(self, address: str, client_id: str) -> None:
        """Deribit refused the secret: the address's refusals for this key go down by one."""
        _attempt, refused = self._keys(address, client_id)
        await self.buckets.charge([refused])
