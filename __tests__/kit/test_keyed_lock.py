"""KeyedLock: one holder per key at a time, and nothing kept of a key once no one uses it."""

import asyncio

from cryptomarket.kit.keyed_lock import KeyedLock


async def test_one_holder_per_key_even_when_a_newcomer_arrives_as_the_lock_is_handed_on() -> None:
    locks = KeyedLock()
    inside: list[str] = []
    overlaps: list[tuple[str, ...]] = []
    release_first = asyncio.Event()

    async def holder(name: str, wait: asyncio.Event | None = None) -> None:
        async with locks.hold("BTC-PERPETUAL"):
            inside.append(name)
            if len(inside) > 1:
                overlaps.append(tuple(inside))
            if wait is not None:
                await wait.wait()
            await asyncio.sleep(0)
            inside.remove(name)

    first = asyncio.create_task(holder("first", release_first))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(holder("waiter"))
    await asyncio.sleep(0)  # the waiter queues on the held lock
    release_first.set()
    await first  # the lock is handed to the waiter, which has not run yet
    newcomer = asyncio.create_task(holder("newcomer"))  # must queue behind it, not beside it
    await asyncio.gather(waiter, newcomer)
    assert overlaps == []
    assert len(locks) == 0  # every key forgotten once its last user left


async def test_keys_do_not_wait_for_each_other_and_are_forgotten_after_an_error() -> None:
    locks = KeyedLock()
    async with locks.hold("a"):
        async with asyncio.timeout(1):
            async with locks.hold("b"):  # another key: not blocked by "a"
                assert len(locks) == 2
    try:
        async with locks.hold("c"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert len(locks) == 0
