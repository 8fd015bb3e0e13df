"""When the tick writer writes: a tick after a quiet spell at once, a burst in few writes."""

from sqlalchemy import func, select

from __tests__.helpers import eventually_async
from cryptomarket.core.db import Database
from cryptomarket.prices.models import Tick
from cryptomarket.prices.writer import TickWriter


async def stored(database: Database) -> int:
    table = database.tables.price_tickers
    async with database.reading() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def test_a_tick_after_a_quiet_spell_is_written_at_once(database: Database) -> None:
    """Not after the flush interval: the first tick in a while goes out as it comes (and no
    timer wakes the process while nothing comes)."""
    writer = TickWriter(database, flush_interval=3600)
    writer.start()
    try:
        writer.add(Tick("btc_usd", 1.0, 1_700_000_000_000))

        async def written() -> bool:
            return await stored(database) == 1

        await eventually_async(written, timeout=5, what="the tick stored")
    finally:
        await writer.stop()


async def test_ticks_coming_fast_are_gathered_into_one_write_per_interval(
    database: Database,
) -> None:
    writer = TickWriter(database, flush_interval=0.3)
    writer.start()
    try:
        writer.add(Tick("btc_usd", 1.0, 1_700_000_000_000))

        async def first() -> bool:
            return writer.written == 1

        await eventually_async(first, timeout=5, what="the first tick written at once")
        writes = writer.write_seconds.count
        for k in range(1, 200):  # within the interval of that write: they wait for its end
            writer.add(Tick("btc_usd", 1.0, 1_700_000_000_000 + k))

        async def all_written() -> bool:
            return writer.written == 200

        await eventually_async(all_written, timeout=5, what="the burst written")
        assert writer.write_seconds.count - writes == 1  # one write for the whole burst
        assert await stored(database) == 200
    finally:
        await writer.stop()
