"""What every fault test needs: a user streaming btc_usd at timer=0 through a real server, a
record of what the stream and the store saw, and the checks that the fault left no mark."""

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from __tests__.helpers import eventually, eventually_async
from __tests__.service import Service, running_service
from __tests__.sse import Event, Stream, open_stream
from cryptomarket.core.db import Database
from cryptomarket.deribit.simulator import Simulator

TICKER = "btc_usd"


@dataclass
class Watched:
    """One open stream, read in the background into `events`."""

    service: Service
    stream: Stream
    events: list[Event] = field(default_factory=list)
    ended: bool = False  # the server ended the stream (a fault must never do that)

    @property
    def simulator(self) -> Simulator:
        return self.service.simulator

    @property
    def database(self) -> Database:
        database: Database = self.service.runtime.database
        return database

    def statuses(self, after: int = 0) -> list[str]:
        """The upstream states announced, from event number `after` on."""
        return [e.data["upstream"] for e in self.events[after:] if e.event == "status"]

    def prices(self) -> list[int]:
        return [e.data["timestamp"] for e in self.events if e.event == "price"]

    def gaps(self) -> list[dict[str, Any]]:
        return [e.data for e in self.events if e.event == "gap"]

    async def price_after(self, timestamp: int, timeout: float) -> float:
        """Seconds until the stream carries a price newer than `timestamp` (fails past timeout)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await eventually(
            lambda: any(ts > timestamp for ts in self.prices()),
            timeout=timeout,
            what=f"a price after {timestamp} on the stream",
        )
        return loop.time() - started

    def latest_tick(self) -> int:
        return self.simulator.history(TICKER)[-1][0]

    def assert_same_stream(self) -> None:
        """Still open, opened once, and every price id strictly after the one before."""
        assert not self.ended, "the server ended the stream"
        assert [e.event for e in self.events].count("connected") == 1
        stamps = self.prices()
        ids = [e.id for e in self.events if e.event == "price"]
        assert ids == [f"{TICKER}:{ts}" for ts in stamps]
        repeated = [(a, b) for a, b in itertools.pairwise(stamps) if b <= a]
        assert not repeated, f"price ids not strictly increasing: {repeated[:3]}"


@asynccontextmanager
async def watching(
    simulator: Simulator, database_url: str, **settings: Any
) -> AsyncIterator[Watched]:
    """The service, alice subscribed to every btc_usd tick, her stream open and pricing."""
    async with running_service(simulator, database_url, **settings) as service:
        token = await service.sign_in("alice")
        async with service.client_for(token) as client:
            created = await client.get(f"/api/v1/market/alice/create_order/{TICKER}?timer=0")
            assert created.status_code in (200, 201), created.text
            async with open_stream(client) as stream:
                assert stream.response.status_code == 200
                watched = Watched(service, stream)

                async def read() -> None:
                    try:
                        while True:
                            watched.events.append(await stream.next_event(timeout=3600))
                    except EOFError:
                        watched.ended = True

                reader = asyncio.create_task(read())
                try:
                    await eventually(lambda: len(watched.prices()) >= 5, what="first prices")
                    await eventually(
                        lambda: watched.statuses()[-1:] == ["connected"], what="upstream up"
                    )
                    yield watched
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)


async def stored_ticks(database: Database) -> list[int]:
    table = database.tables.price_tickers
    async with database.reading() as connection:
        rows = await connection.execute(
            select(table.c.timestamp).where(table.c.ticker == TICKER).order_by(table.c.timestamp)
        )
        return list(rows.scalars())


async def stored_gaps(database: Database) -> list[tuple[int, int, str]]:
    table = database.tables.price_gaps
    async with database.reading() as connection:
        rows = await connection.execute(
            select(table.c.from_ts, table.c.to_ts, table.c.reason).where(table.c.ticker == TICKER)
        )
        return [(int(a), int(b), str(reason)) for a, b, reason in rows]


async def assert_no_duplicates(database: Database) -> None:
    table = database.tables.price_tickers
    async with database.reading() as connection:
        duplicated = await connection.execute(
            select(table.c.ticker, table.c.timestamp)
            .group_by(table.c.ticker, table.c.timestamp)
            .having(func.count() > 1)
        )
        assert list(duplicated) == []


async def store_accounts_for_everything(
    watched: Watched, since: int, until: int, *, gaps_expected: bool = False, timeout: float = 15
) -> list[tuple[int, int, str]]:
    """Every tick the simulator made in [since, until] is stored once, or lies in a recorded gap;
    without `gaps_expected` there must be no gap at all. Returns the gaps."""
    simulator, database = watched.simulator, watched.database
    missing: list[int] = []
    gaps: list[tuple[int, int, str]] = []

    async def complete() -> bool:
        stored = await stored_ticks(database)
        gaps[:] = await stored_gaps(database)
        if not stored or stored[-1] < until:
            missing[:] = [until]
            return False
        have = set(stored)
        missing[:] = [
            ts
            for ts, _ in simulator.history(TICKER)
            if since <= ts <= until and ts not in have and not any(a <= ts <= b for a, b, _ in gaps)
        ]
        return not missing

    try:
        await eventually_async(complete, timeout=timeout, what="every tick stored or in a gap")
    except AssertionError:
        detail = f"{len(missing)} ticks neither stored nor in a gap: {missing[:5]}"
        raise AssertionError(detail) from None
    if not gaps_expected:
        # A feed that goes quiet while connected is checked against history (the ingest cannot
        # tell a pause from a stall): a gap there may only say history has no tick there either.
        wrong = [gap for gap in gaps if "has no tick for" not in gap[2]]
        assert wrong == [], f"gaps recorded although Deribit still had every tick: {wrong}"
    await assert_no_duplicates(database)
    return gaps


def requests_made(simulator: Simulator) -> int:
    """Requests the simulator received from the service (its control calls left out)."""
    return sum(n for method, n in simulator.calls.items() if not method.startswith("sim/"))
