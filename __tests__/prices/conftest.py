"""Databases for the price tests (every test that asks runs on SQLite and on PostgreSQL), and
`start_ingest`, which starts ingest against a simulator the way the service does."""

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from __tests__.databases import fresh_database_url
from cryptomarket.core.db import Database, urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.connection import DeribitConnection
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.backfill import ChartSource, chart_source
from cryptomarket.prices.ingest import Ingest
from cryptomarket.prices.writer import TickWriter
from cryptomarket.streaming.bus import LocalBus


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind: a fresh SQLite file, a fresh PostgreSQL database."""
    with fresh_database_url(request, request.param, tmp_path) as url:
        yield url


@pytest.fixture
def migrated_url(database_url: str) -> str:
    upgrade(urls_for(database_url).sync_url)
    return database_url


@pytest.fixture
async def database(migrated_url: str) -> AsyncIterator[Database]:
    database = Database(migrated_url)
    yield database
    await database.dispose()


StartIngest = Callable[..., Awaitable[Ingest]]


@pytest.fixture
async def start_ingest(simulator: Simulator) -> AsyncIterator[StartIngest]:
    """Starts ingest the way the service does, with fast timings; stops everything after."""
    started: list[tuple[Ingest, TickWriter | None, DeribitPool]] = []

    async def start(
        database: Database,
        tracked: set[str],
        *,
        on: Simulator | None = None,
        with_writer: bool = True,
        history: Callable[[ChartSource], ChartSource] = lambda source: source,
        **options: Any,
    ) -> Ingest:
        """`on` another simulator than the default one; without a writer, as the ingest of
        distributed mode; `history` wraps the chart source; `options` go to Ingest."""
        sim = on or simulator
        budget = CreditBudget()
        pool = DeribitPool(sim.url, size=2, budget=budget, heartbeat_interval=0.5)
        writer = (
            TickWriter(database, flush_interval=0.05, backoff=Backoff(0.05, 0.3))
            if with_writer
            else None
        )
        connection = DeribitConnection(
            sim.url,
            budget=budget,
            heartbeat_interval=0.5,
            backoff=Backoff(initial=0.05, maximum=0.3),
            name="ingest",
        )
        ingest = Ingest(
            connection,
            writer,
            LocalBus(),
            database=database,
            history=history(chart_source(pool.call)),
            tracked=tracked,
            **options,
        )
        if writer is not None:
            writer.start()
        await ingest.start()
        started.append((ingest, writer, pool))
        return ingest

    yield start
    for ingest, writer, pool in started:
        await ingest.stop()
        if writer is not None:
            await writer.stop()
        await pool.close()
