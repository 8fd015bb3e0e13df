"""The tick writer records a gap while ticks keep coming, not only when its buffer runs dry."""

import asyncio

from sqlalchemy import func, select

from __tests__.helpers import eventually_async
from cryptomarket.core.db import Database
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.writer import TickWriter


async def test_a_gap_is_recorded_while_ticks_keep_coming(database: Database) -> None:
    writer = TickWriter(database, flush_interval=0.05)
    writer.start()
    flowing = asyncio.Event()

    async def ticks() -> None:  # a steady feed: the buffer is never empty when a write starts
        timestamp = 1_700_000_000_000
        while True:
            for ticker in ("btc_usd", "eth_usd"):
                writer.add(Tick(ticker, 1.0, timestamp))
            timestamp += 1
            flowing.set()
            await asyncio.sleep(0.002)

    feed = asyncio.create_task(ticks())
    try:
        await flowing.wait()
        writer.add_gap(Gap("btc_usd", 1_600_000_000_000, 1_600_000_001_000, "missed"))
        table = database.tables.price_gaps

        async def recorded() -> bool:
            async with database.reading() as connection:
                count = await connection.scalar(select(func.count()).select_from(table))
            return bool(count)

        await eventually_async(recorded, timeout=3, what="the gap recorded")
        assert writer.written > 0
    finally:
        feed.cancel()
        await asyncio.gather(feed, return_exceptions=True)
        await writer.stop()
