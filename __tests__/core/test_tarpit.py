"""Refusals held for clients that come back before their Retry-After (kit/tarpit.py)."""

import asyncio

from cryptomarket.kit import tarpit
from cryptomarket.kit.tarpit import Tarpit

HOLD = 0.2


async def timed(pit: Tarpit, client: str, retry_after: float | None = 5.0) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pit.refuse(client, retry_after)
    return loop.time() - started


async def test_the_first_refusal_goes_at_once_and_the_ones_that_do_not_wait_are_held() -> None:
    pit = Tarpit(hold=HOLD)
    assert await timed(pit, "203.0.113.9") < HOLD  # told to wait: not held
    assert await timed(pit, "203.0.113.9") >= HOLD  # back at once: held
    assert await timed(pit, "198.51.100.4") < HOLD  # someone else is not


async def test_a_client_back_after_its_retry_after_is_not_held() -> None:
    pit = Tarpit(hold=5.0)
    await pit.refuse("203.0.113.9", 0.1)
    await asyncio.sleep(0.15)  # waits as it was told
    assert await timed(pit, "203.0.113.9", 0.1) < 0.1
    # A hold ends with the Retry-After, when that comes first.
    assert 0.05 <= await timed(pit, "203.0.113.9", 0.1) < 1.0


async def test_a_client_holds_at_most_max_held_refusals_at_once() -> None:
    pit = Tarpit(hold=HOLD)
    await pit.refuse("203.0.113.9", 5.0)
    held = [asyncio.create_task(timed(pit, "203.0.113.9")) for _ in range(tarpit.MAX_HELD + 5)]
    waits = await asyncio.gather(*held)
    assert sum(wait >= HOLD for wait in waits) == tarpit.MAX_HELD
    assert sum(wait < HOLD for wait in waits) == 5  # past the bound they go out at once
