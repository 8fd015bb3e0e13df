"""Stopping the tick writer: a caller cancelled while it waits is not swallowed."""

import asyncio

import pytest

from cryptomarket.core.db import Database
from cryptomarket.core.tasks import cancel_and_wait
from cryptomarket.prices.models import Tick
from cryptomarket.prices.writer import TickWriter


async def test_a_caller_cancelled_while_stopping_the_writer_stays_cancelled(
    database: Database,
) -> None:
    writer = TickWriter(database, flush_interval=60)
    writer.start()
    writer.add(Tick("btc_usd", 1.0, 1_700_000_000_000))
    stopping = asyncio.create_task(writer.stop())
    await asyncio.sleep(0)  # one loop turn: `stopping` now waits for the writer's loop to end
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert stopping.cancelled()
    await writer.stop()  # a second, uncancelled stop still writes what is buffered
    assert writer.written == 1


async def test_cancel_and_wait_ends_the_child_and_keeps_the_caller_cancellable() -> None:
    child = asyncio.create_task(asyncio.Event().wait())
    await cancel_and_wait(child)
    assert child.cancelled()

    blocked = asyncio.Event()

    async def stubborn() -> None:  # ends only when told, even after a cancel
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await blocked.wait()

    child = asyncio.create_task(stubborn())
    await asyncio.sleep(0)  # the child is waiting
    caller = asyncio.create_task(cancel_and_wait(child))
    await asyncio.sleep(0)  # the caller is waiting for the child
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not child.done()
    blocked.set()
    await asyncio.wait({child})
