"""The price store on SQLite and PostgreSQL: migrations, idempotent writes, the write buffer."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import inspect, select, text

from __tests__.helpers import eventually
from __tests__.servers import PostgresServer
from cryptomarket.core.db import Database, create_sync_engine, urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.writer import OVERFLOW_REASON, TickWriter

EXPECTED_TABLES = {
    "person",
    "person_prices",
    "price_tickers",
    "instrument_ticks",
    "price_gaps",
    "sessions",
    "price_candles",
}


def ticks(ticker: str, start: int, count: int, step: int = 1000) -> list[Tick]:
    return [Tick(ticker, 100.0 + i, start + i * step) for i in range(count)]


async def stored(database: Database, ticker: str) -> list[int]:
    async with database.reading() as connection:
        table = database.tables.price_tickers
        result = await connection.execute(
            select(table.c.timestamp).where(table.c.ticker == ticker).order_by(table.c.timestamp)
        )
        return list(result.scalars())


def test_migrations_create_the_named_tables_and_can_run_again(database_url: str) -> None:
    sync_url = urls_for(database_url).sync_url
    upgrade(sync_url)
    upgrade(sync_url)  # at head already: nothing to do, nothing dropped
    engine = create_sync_engine(sync_url)
    try:
        inspector = inspect(engine)
        if sync_url.get_backend_name() == "postgresql":
            assert set(inspector.get_table_names(schema="crypto")) == EXPECTED_TABLES | {
                "alembic_version"
            }
            assert inspector.get_table_names(schema="public") == []
        else:
            assert set(inspector.get_table_names()) == {
                f"crypto_{name}" for name in EXPECTED_TABLES | {"alembic_version"}
            }
        price_table, schema = (
            ("price_tickers", "crypto")
            if sync_url.get_backend_name() == "postgresql"
            else ("crypto_price_tickers", None)
        )
        key = inspector.get_pk_constraint(price_table, schema=schema)
        assert key["constrained_columns"] == ["ticker", "timestamp"]
    finally:
        engine.dispose()


async def test_a_replayed_batch_stores_each_tick_once(database: Database) -> None:
    batch = ticks("btc_usd", 1_700_000_000_000, 500)
    for _ in range(2):
        async with database.transaction() as connection:
            await PriceRepository(connection, database.tables).add_ticks(batch)
    overlapping = ticks("btc_usd", 1_700_000_000_000 + 250_000, 500)
    async with database.transaction() as connection:
        await PriceRepository(connection, database.tables).add_ticks(overlapping)
    timestamps = await stored(database, "btc_usd")
    assert len(timestamps) == 750
    assert len(set(timestamps)) == 750


async def test_gaps_recorded_twice_widen_instead_of_repeating(database: Database) -> None:
    async with database.transaction() as connection:
        repository = PriceRepository(connection, database.tables)
        await repository.add_gap(Gap("eth_usd", 1000, 5000, "test"))
        await repository.add_gap(Gap("eth_usd", 1000, 9000, "test"))
        await repository.add_gap(Gap("eth_usd", 1000, 7000, "test"))
    async with database.reading() as connection:
        gaps = await PriceRepository(connection, database.tables).gaps_between("eth_usd", 0, 10**6)
    assert gaps == [Gap("eth_usd", 1000, 9000, "test")]


async def test_the_writer_batches_ticks_into_the_store(database: Database) -> None:
    writer = TickWriter(database, batch_size=100, flush_interval=0.05)
    writer.start()
    for tick in ticks("eth_usd", 1_700_000_000_000, 1_234):
        writer.add(tick)
    await writer.stop()
    assert len(await stored(database, "eth_usd")) == 1_234
    assert writer.written == 1_234


@pytest.fixture
async def postgres_database(postgres_server: PostgresServer) -> AsyncIterator[Database]:
    postgres_server.create_database("writer_outage")
    url = postgres_server.url(database="writer_outage")
    upgrade(urls_for(url).sync_url)
    database = Database(url)
    yield database
    await database.dispose()
    if not postgres_server.running:
        postgres_server.start()
    postgres_server.drop_database("writer_outage")


async def test_ticks_wait_out_a_database_restart_and_are_stored_once(
    postgres_database: Database, postgres_server: PostgresServer
) -> None:
    writer = TickWriter(
        postgres_database, batch_size=50, flush_interval=0.05, backoff=Backoff(0.05, 0.2)
    )
    writer.start()
    sent = ticks("btc_usd", 1_700_000_000_000, 600)
    for tick in sent[:200]:
        writer.add(tick)
    await writer.flush()

    await asyncio.to_thread(postgres_server.stop)
    for tick in sent[200:500]:
        writer.add(tick)
    await eventually(lambda: not writer.healthy, what="the writer to notice the outage")
    assert writer.buffered > 0
    await asyncio.to_thread(postgres_server.start)
    for tick in sent[500:]:
        writer.add(tick)
    await writer.stop(timeout=30)

    assert await stored(postgres_database, "btc_usd") == [tick.timestamp for tick in sent]
    assert writer.healthy


async def test_overflow_while_the_database_is_down_becomes_a_gap(
    postgres_database: Database, postgres_server: PostgresServer
) -> None:
    writer = TickWriter(
        postgres_database,
        max_buffer=100,
        batch_size=50,
        flush_interval=0.05,
        backoff=Backoff(0.05, 0.2),
    )
    writer.start()
    await asyncio.to_thread(postgres_server.stop)
    sent = ticks("sol_usdc", 1_700_000_000_000, 160)
    for tick in sent:
        writer.add(tick)
    await eventually(lambda: not writer.healthy, what="the writer to notice the outage")
    assert writer.buffered == 100
    assert writer.dropped == 60
    await asyncio.to_thread(postgres_server.start)
    await writer.stop(timeout=30)

    assert await stored(postgres_database, "sol_usdc") == [t.timestamp for t in sent[:100]]
    async with postgres_database.reading() as connection:
        gaps = await PriceRepository(connection, postgres_database.tables).gaps_between(
            "sol_usdc", 0, 2**62
        )
        rows = await connection.execute(text("SELECT count(*) FROM crypto.price_gaps"))
    assert gaps == [Gap("sol_usdc", sent[100].timestamp, sent[-1].timestamp, OVERFLOW_REASON)]
    assert rows.scalar() == 1
