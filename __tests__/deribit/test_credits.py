import asyncio

import pytest

from cryptomarket.deribit.credits import CreditBudget, CreditLimits
from cryptomarket.deribit.errors import CreditTimeout
from cryptomarket.kit.buckets import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_continuously_up_to_its_cap() -> None:
    clock = FakeClock()
    bucket = TokenBucket(50_000, 10_000, clock)
    assert all(bucket.try_take(500) for _ in range(100))  # Deribit's burst: 100 requests
    assert not bucket.try_take(500)
    assert bucket.wait_time(500) == pytest.approx(0.05)
    clock.now += 0.05
    assert bucket.try_take(500)
    clock.now += 100
    assert bucket.level == 50_000


def test_overdraft_and_drain() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1_000, 1_000, clock)
    assert bucket.try_take(1_000)
    assert not bucket.try_take(500)
    assert bucket.try_take(500, overdraft=500)
    assert bucket.level == -500
    clock.now = 2.0
    bucket.drain()
    assert bucket.level == 0


async def test_budget_keeps_a_margin_below_deribits_cap() -> None:
    budget = CreditBudget(margin=10_000, max_wait=0.01)
    granted = 0
    with pytest.raises(CreditTimeout):
        while True:
            await budget.acquire("public/get_index_price")
            granted += 1
    assert granted == 80  # 40,000 of Deribit's 50,000 at 500 each
    assert budget.spent == 80 * 500


async def test_subscribe_has_its_own_bucket() -> None:
    budget = CreditBudget(max_wait=0.01)
    for _ in range(6):  # (30,000 - 10,000) / 3,000
        await budget.acquire("public/subscribe")
    with pytest.raises(CreditTimeout):
        await budget.acquire("public/subscribe")
    await budget.acquire("public/get_time")  # the default bucket is untouched


async def test_waiters_get_credit_in_arrival_order() -> None:
    limits = CreditLimits(cost=100, cap=100, refill_per_second=1_000)
    budget = CreditBudget(default=limits, margin=0, max_wait=5)
    await budget.acquire("public/test")  # empty now
    order: list[int] = []

    async def request(number: int) -> None:
        await budget.acquire("public/test")
        order.append(number)

    await asyncio.gather(*(request(n) for n in range(10)))
    assert order == list(range(10))


async def test_priority_requests_skip_the_queue() -> None:
    limits = CreditLimits(cost=500, cap=1_000, refill_per_second=500)
    budget = CreditBudget(default=limits, margin=1_000, max_wait=10)
    await budget.acquire("public/get_time")  # the bucket (cap - margin = 500) is empty
    queued = asyncio.create_task(budget.acquire("public/get_time"))
    await asyncio.sleep(0)
    await asyncio.wait_for(budget.acquire("public/test", priority=True), 0.05)
    assert not queued.done()
    queued.cancel()


async def test_a_request_that_would_wait_too_long_fails_loudly() -> None:
    limits = CreditLimits(cost=500, cap=500, refill_per_second=10)
    budget = CreditBudget(default=limits, margin=0, max_wait=1)
    await budget.acquire("public/get_time")
    with pytest.raises(CreditTimeout, match="would wait more than 1s"):
        await budget.acquire("public/get_time")
