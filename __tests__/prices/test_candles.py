"""Candles, on SQLite and on PostgreSQL: against a brute-force computation over random ticks
stored in overlapping batches (the rollups merge in any order), and the migration that fills the
rollups from ticks stored before it."""

import asyncio
import itertools
import random
from collections import defaultdict
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from cryptomarket.core.db import Database, create_sync_engine, urls_for
from cryptomarket.core.errors import InvalidInput
from cryptomarket.core.migrate import alembic_config, upgrade
from cryptomarket.prices.candles import RESOLUTIONS, bucket_start
from cryptomarket.prices.dates import from_ms
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import PriceRepository, tick_rows
from cryptomarket.prices.service import PriceService
from cryptomarket.prices.tickers import TickerCatalogue

DAY_MS = 86_400_000
BASE = 1_714_521_600_000  # 2024-05-01 00:00 UTC
_names = itertools.count()


class AnyTicker(TickerCatalogue):
    """Every ticker is known: these tests store their own."""

    def __init__(self) -> None:
        pass

    async def contains(self, ticker: str) -> bool:
        return True


def brute_force(ticks: list[Tick], width: int, first: int, end: int) -> list[dict[str, Any]]:
    """Candles the slow way: the first stored price of each timestamp, grouped by bucket."""
    kept: dict[int, float] = {}
    for tick in ticks:
        kept.setdefault(tick.timestamp, tick.price)
    buckets: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for timestamp, price in kept.items():
        start = bucket_start(timestamp, width)
        if first <= start <= end:
            buckets[start].append((timestamp, price))
    candles = []
    for start in sorted(buckets):
        points = sorted(buckets[start])
        prices = [price for _, price in points]
        candles.append(
            {
                "start": start,
                "open": points[0][1],
                "high": max(prices),
                "low": min(prices),
                "close": points[-1][1],
                "count": len(points),
            }
        )
    return candles


tick_offsets = st.lists(
    st.tuples(  # mostly within two hours, so buckets hold ticks of several batches
        st.one_of(st.integers(0, 7_200_000), st.integers(0, 3 * DAY_MS)),
        st.floats(1, 1e6, allow_nan=False),
    ),
    min_size=1,
    max_size=300,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    points=tick_offsets,
    resolution=st.sampled_from(list(RESOLUTIONS)),
    window=st.tuples(st.integers(0, 3 * DAY_MS), st.integers(0, 3 * DAY_MS)),
    limit=st.integers(1, 50),
    seed=st.integers(0, 2**32),
)
def test_candles_equal_a_brute_force_computation(
    migrated_url: str,
    *,
    points: list[tuple[int, float]],
    resolution: str,
    window: tuple[int, int],
    limit: int,
    seed: int,
) -> None:
    ticker = f"c{next(_names)}_usd"
    ticks = [Tick(ticker, price, BASE + offset) for offset, price in points]
    # Stored in random, overlapping batches: some ticks twice, in any order.
    shuffled = random.Random(seed).sample(ticks, len(ticks))
    repeats = shuffled[: len(shuffled) // 3]
    batches = [shuffled[i : i + 7] for i in range(0, len(shuffled), 7)] + [repeats]
    first_ms, end_ms = BASE + min(window), BASE + max(window)
    width = RESOLUTIONS[resolution] * 60_000

    async def run() -> list[dict[str, Any]]:
        database = Database(migrated_url)
        try:
            for batch in batches:
                async with database.transaction() as connection:
                    await PriceRepository(connection, database.tables).add_ticks(batch)
            service = PriceService(database, AnyTicker())
            candles: list[dict[str, Any]] = []
            cursor = None
            while True:  # every page, to the last
                page = await service.candles(
                    ticker,
                    resolution=resolution,
                    start_date=from_ms(first_ms).isoformat(),
                    end_date=from_ms(end_ms).isoformat(),
                    limit=limit,
                    cursor=cursor,
                )
                candles += [item.model_dump(exclude={"datetime", "gap"}) for item in page.items]
                if (cursor := page.next_cursor) is None:
                    return candles
        finally:
            await database.dispose()

    expected = brute_force(
        [tick for batch in batches for tick in batch], width, bucket_start(first_ms, width), end_ms
    )
    assert asyncio.run(run()) == expected


async def test_a_candle_a_gap_overlaps_says_so_and_empty_buckets_are_absent(
    database: Database,
) -> None:
    ticker = "gapped_usd"
    # Ticks in minutes 0, 1 and 4; minutes 2 and 3 hold none; a gap covers 1:30 to 2:10.
    ticks = [
        Tick(ticker, 10.0 + i, BASE + minute * 60_000 + i * 1000)
        for minute in (0, 1, 4)
        for i in range(3)
    ]
    async with database.transaction() as connection:
        repository = PriceRepository(connection, database.tables)
        await repository.add_ticks(ticks)
        await repository.add_gap(Gap(ticker, BASE + 90_000, BASE + 130_000, "test"))
    page = await PriceService(database, AnyTicker()).candles(
        ticker,
        resolution="1",
        start_date=from_ms(BASE).isoformat(),
        end_date=from_ms(BASE + 10 * 60_000).isoformat(),
        limit=100,
        cursor=None,
    )
    assert [(item.start - BASE) // 60_000 for item in page.items] == [0, 1, 4]
    assert [item.gap for item in page.items] == [False, True, False]
    assert [item.count for item in page.items] == [3, 3, 3]


def test_the_migration_fills_candles_from_ticks_stored_before_it(database_url: str) -> None:
    sync_url = urls_for(database_url).sync_url
    command.upgrade(alembic_config(sync_url), "0003")
    engine = create_sync_engine(sync_url)
    database = Database(database_url)
    ticks = [Tick("old_usd", float(i % 17), BASE + i * 7_000) for i in range(2_000)]
    try:
        with engine.begin() as connection:
            connection.execute(insert(database.tables.price_tickers), tick_rows(ticks))
        upgrade(sync_url)

        async def read(resolution: str) -> list[dict[str, Any]]:
            page = await PriceService(database, AnyTicker()).candles(
                "old_usd",
                resolution=resolution,
                start_date=from_ms(BASE).isoformat(),
                end_date=from_ms(BASE + DAY_MS).isoformat(),
                limit=10_000,
                cursor=None,
            )
            await database.dispose()
            return [item.model_dump(exclude={"datetime", "gap"}) for item in page.items]

        for resolution in ("1", "15", "60", "1D"):
            width = RESOLUTIONS[resolution] * 60_000
            expected = brute_force(ticks, width, BASE, BASE + DAY_MS)
            assert asyncio.run(read(resolution)) == expected, resolution
    finally:
        engine.dispose()


@pytest.mark.parametrize("resolution", ["2", "1H", "", "D", "60m"])
async def test_an_unknown_resolution_is_a_sentence(database: Database, resolution: str) -> None:
    with pytest.raises(InvalidInput, match="not one of Deribit's: 1, 3, 5"):
        await PriceService(database, AnyTicker()).candles(
            "btc_usd",
            resolution=resolution,
            start_date="2024-05-01_00:00:00",
            end_date=None,
            limit=10,
            cursor=None,
        )
