"""Batched: keys asked at about once share one query, and no key gets an answer read before it
was asked."""

import asyncio

import pytest

from cryptomarket.kit.batched import Batched


class Store:
    """A table whose queries can be held open, to ask more keys while one runs."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {"a": 1, "b": 2, "c": 3}
        self.queries: list[list[str]] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.started = asyncio.Event()
        self.fail: Exception | None = None

    async def load(self, keys: list[str]) -> dict[str, int]:
        self.queries.append(keys)
        snapshot = {key: self.rows[key] for key in keys if key in self.rows}  # read at the start
        self.started.set()
        await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        return snapshot


async def test_keys_asked_while_a_query_runs_go_together_in_the_next() -> None:
    store = Store()
    batched = Batched(store.load)
    store.hold.clear()
    first = asyncio.create_task(batched.get("a"))
    await store.started.wait()
    others = [asyncio.create_task(batched.get(key)) for key in ("b", "c", "b", "missing")]
    await asyncio.sleep(0)
    store.hold.set()
    assert await first == 1
    assert [await task for task in others] == [2, 3, 2, None]
    assert store.queries == [["a"], ["b", "c", "missing"]]


async def test_a_key_in_flight_is_asked_again_and_sees_what_changed_before_it_was_asked() -> None:
    store = Store()
    batched = Batched(store.load)
    store.hold.clear()
    before = asyncio.create_task(batched.get("a"))
    await store.started.wait()  # the query has read "a" as 1
    store.rows["a"] = 10  # e.g. a sign-out committed now, then the same session asked again
    after = asyncio.create_task(batched.get("a"))
    await asyncio.sleep(0)
    store.hold.set()
    assert await before == 1
    assert await after == 10
    assert store.queries == [["a"], ["a"]]


async def test_a_failed_query_fails_its_callers_and_the_next_one_runs_afresh() -> None:
    store = Store()
    batched = Batched(store.load)
    store.fail = ConnectionError("database away")
    with pytest.raises(ConnectionError):
        await batched.get("a")
    store.fail = None
    assert await batched.get("a") == 1


async def test_a_caller_that_gives_up_leaves_the_others_answer_alone() -> None:
    store = Store()
    batched = Batched(store.load)
    store.hold.clear()
    gives_up = asyncio.create_task(batched.get("a"))
    waits = asyncio.create_task(batched.get("a"))
    await store.started.wait()
    gives_up.cancel()
    store.hold.set()
    assert await waits == 1
    with pytest.raises(asyncio.CancelledError):
        await gives_up


async def test_a_batch_holds_at_most_max_batch_keys() -> None:
    store = Store()
    batched = Batched(store.load, max_batch=2)
    store.hold.clear()
    first = asyncio.create_task(batched.get("a"))
    await store.started.wait()
    rest = [asyncio.create_task(batched.get(key)) for key in ("b", "c", "d")]
    await asyncio.sleep(0)
    store.hold.set()
    await asyncio.gather(first, *rest)
    assert store.queries == [["a"], ["b", "c"], ["d"]]
