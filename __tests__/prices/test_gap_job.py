"""The periodic gap backfill against Deribit-like coarse history: the gap stays, said so, once."""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, insert, select

from __tests__.app_server import app_settings
from __tests__.helpers import eventually
from cryptomarket.core.db import create_sync_engine, urls_for
from cryptomarket.core.tables import Tables, build_tables
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.jobs import gaps
from cryptomarket.prices.backfill import HISTORY_CHECKED
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import store_ticks

CHART = "public/get_index_chart_data"


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    engine = create_sync_engine(urls_for(migrated_url).sync_url)
    yield engine
    engine.dispose()


def recorded(engine: Engine, tables: Tables) -> list[tuple[int, int, str]]:
    column = tables.price_gaps.c
    with engine.connect() as connection:
        rows = connection.execute(select(column.from_ts, column.to_ts, column.reason))
        return [(row.from_ts, row.to_ts, row.reason) for row in rows]


@pytest.mark.parametrize("spacing", [60, 1], ids=["a-minute", "a-second-vs-20-ticks"])
async def test_a_gap_history_has_only_coarsely_is_kept_and_not_retried(
    engine: Engine, simulator_factory: Callable[..., Awaitable[Simulator]], spacing: int
) -> None:
    simulator = await simulator_factory(chart_spacing=spacing)
    tables = build_tables(engine.dialect.name)
    await eventually(lambda: len(simulator.history("btc_usd")) >= 60, what="ticks")
    history = simulator.history("btc_usd")
    start, end = history[30][0], history[-4][0]
    live = [Tick("btc_usd", price, ts) for ts, price in history[:30]]  # stored before the gap
    with engine.begin() as connection:
        store_ticks(connection, tables, live)
        connection.execute(
            insert(tables.price_gaps).values(
                ticker="btc_usd",
                from_ts=start,
                to_ts=end,
                reason="the database was unavailable and the write buffer was full",
                recorded_at=datetime.now(UTC),
            )
        )
    settings = app_settings(DERIBIT_WS_URL=simulator.url)
    assert await asyncio.to_thread(gaps.backfill_gaps, settings, engine, tables) == 0
    [(from_ts, to_ts, reason)] = recorded(engine, tables)
    assert (from_ts, to_ts) == (start, end)
    assert reason.startswith(HISTORY_CHECKED) and f"{spacing} s apart" in reason
    with engine.connect() as connection:
        prices = connection.execute(select(func.count()).select_from(tables.price_tickers))
        assert prices.scalar() == len(live)  # the averages are not stored as ticks
    assert simulator.calls[CHART] == 1
    # Older history is never finer: the next run does not ask again.
    assert await asyncio.to_thread(gaps.backfill_gaps, settings, engine, tables) == 0
    assert simulator.calls[CHART] == 1
    assert recorded(engine, tables) == [(start, end, reason)]
