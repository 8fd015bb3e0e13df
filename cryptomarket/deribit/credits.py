"""Credit accounting with Deribit's numbers (reference section 8).

Deribit charges every request credits from a bucket that refills continuously up to a cap; a
request with no credit left gets 10028 and the session is dropped. The client keeps its own,
slightly smaller bucket so it never gets there; the simulator uses the same bucket to enforce it.
"""

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol

from cryptomarket.deribit.errors import CreditTimeout
from cryptomarket.kit.buckets import TokenBucket

SUBSCRIBE_METHODS = frozenset({"public/subscribe", "private/subscribe"})


@dataclass(frozen=True)
class CreditLimits:
    cost: int
    cap: int
    refill_per_second: float


# Non-matching-engine default and the custom bucket of subscribe calls.
DEFAULT_LIMITS = CreditLimits(cost=500, cap=50_000, refill_per_second=10_000)
SUBSCRIBE_LIMITS = CreditLimits(cost=3_000, cap=30_000, refill_per_second=10_000)


def bucket_for(method: str) -> str:
    return "subscribe" if method in SUBSCRIBE_METHODS else "default"


class SharedBudget(Protocol):
    """Credits shared with the deployment's other processes (distributed mode)."""

    async def take(self, bucket: str, cost: int, *, overdraft: float = 0.0) -> float:
        """Take `cost` credits, going at most `overdraft` below zero: 0.0, or seconds to wait."""
        ...

    async def drain(self) -> None: ...


class CreditBudget:
    """The process-wide client-side budget, shared by every Deribit connection of the process.

    Each bucket keeps `margin` credits below Deribit's cap. Requests reach Deribit a little after
    they leave; a margin of M credits absorbs bunching of up to M / refill seconds of delay
    (10,000 credits: one second), so the server's bucket never runs dry while ours has credit.
    Waiters are served in arrival order; a request waits at most `max_wait` seconds, then fails
    with CreditTimeout: it is never dropped silently. Priority requests (heartbeat answers and the
    set-up after a reconnect) skip the queue and may spend half of the margin: an unanswered
    `test_request` would cost the whole connection.

    In distributed mode a request also takes its credits from the deployment's `shared` budget
    (after this one, so the process's arrival order holds there too).
    """

    def __init__(
        self,
        *,
        default: CreditLimits = DEFAULT_LIMITS,
        subscribe: CreditLimits = SUBSCRIBE_LIMITS,
        margin: int = 10_000,
        max_wait: float = 30.0,
        shared: SharedBudget | None = None,
    ) -> None:
        self._limits = {"default": default, "subscribe": subscribe}
        self._buckets = {
            name: TokenBucket(max(limits.cost, limits.cap - margin), limits.refill_per_second)
            for name, limits in self._limits.items()
        }
        self._locks = {name: asyncio.Lock() for name in self._limits}
        self._overdraft = margin / 2
        self.max_wait = max_wait
        self.shared = shared
        self.spent = 0  # credits granted since start, for metrics

    def cost(self, method: str) -> int:
        return self._limits[bucket_for(method)].cost

    def available(self, bucket: str = "default") -> float:
        return self._buckets[bucket].level

    async def drain(self) -> None:
        """Deribit answered 10028: its buckets are empty whatever ours say, so empty ours."""
        for bucket in self._buckets.values():
            bucket.drain()
        if self.shared is not None:
            await self.shared.drain()

    async def acquire(
        self, method: str, *, priority: bool = False, max_wait: float | None = None
    ) -> None:
        """Wait for the method's credits, in arrival order, at most `max_wait` seconds."""
        name = bucket_for(method)
        bucket, cost = self._buckets[name], self._limits[name].cost
        limit = self.max_wait if max_wait is None else max_wait
        overdraft = self._overdraft if priority else 0.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        try:
            async with asyncio.timeout(limit):
                async with contextlib.nullcontext() if priority else self._locks[name]:
                    while not bucket.try_take(cost, overdraft=overdraft):
                        delay = bucket.wait_time(cost, overdraft=overdraft)
                        if loop.time() + delay > deadline:
                            raise CreditTimeout(
                                f"Deribit credit budget exhausted: {method} would wait "
                                f"more than {limit:g}s"
                            )
                        await asyncio.sleep(delay)
                    if self.shared is not None:
                        await _take_shared(
                            self.shared,
                            method,
                            cost,
                            overdraft=overdraft,
                            deadline=deadline,
                            limit=limit,
                        )
        except TimeoutError:
            raise CreditTimeout(
                f"Deribit credit budget exhausted: {method} waited {limit:g}s for its turn"
            ) from None
        self.spent += cost


async def _take_shared(
    shared: SharedBudget, method: str, cost: int, *, overdraft: float, deadline: float, limit: float
) -> None:
    loop = asyncio.get_running_loop()
    while delay := await shared.take(bucket_for(method), cost, overdraft=overdraft):
        if loop.time() + delay > deadline:
            raise CreditTimeout(
                f"Deribit credit budget of the deployment exhausted: {method} would wait "
                f"more than {limit:g}s"
            )
        await asyncio.sleep(delay)
