"""Ingest through an upstream outage: what it publishes, in what order, at coarse and fine history.

The bus is what every hub and (in distributed mode) the store read, so these check the published
sequence itself against the simulator's record of what it produced.
"""

import asyncio
import itertools
from typing import Any

import pytest

from __tests__.helpers import eventually, eventually_async
from __tests__.prices.conftest import StartIngest
from __tests__.simulated import sim_control
from cryptomarket.core.db import Database
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.backfill import FAILED_PREFIX, HISTORY_CHECKED, ChartSource
from cryptomarket.prices.ingest import Ingest
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.streaming.bus import Event

TICKER = "btc_usd"


class Published:
    """Every event the ingest put on its bus."""

    def __init__(self, ingest: Ingest) -> None:
        self.events: list[Event] = []
        ingest.bus.subscribe(self.events.append)  # type: ignore[attr-defined]

    def ticks(self, ticker: str = TICKER) -> list[Tick]:
        return [e for e in self.events if isinstance(e, Tick) and e.ticker == ticker]

    def stamps(self, ticker: str = TICKER) -> list[int]:
        return [tick.timestamp for tick in self.ticks(ticker)]

    def gaps(self, ticker: str = TICKER) -> list[Gap]:
        return [e for e in self.events if isinstance(e, Gap) and e.ticker == ticker]


async def outage(simulator: Simulator, published: Published, seconds: float = 1.0) -> int:
    """Cut the upstream for about `seconds` once ticks flow; returns the last tick seen before."""
    await eventually(lambda: len(published.stamps()) >= 5, what="ticks before the outage")
    await sim_control(
        simulator, ("sim/refuse_connections", {"seconds": seconds}), ("sim/drop_connections", {})
    )
    return published.stamps()[-1]


def unaccounted(simulator: Simulator, published: Published, first: int, last: int) -> list[int]:
    """Produced ticks from `first` to `last` neither published nor inside a published gap."""
    seen = set(published.stamps())
    gaps = published.gaps()
    return [
        ts
        for ts, _ in simulator.produced(TICKER, first - 1, last)
        if ts not in seen and not any(g.from_ts <= ts <= g.to_ts for g in gaps)
    ]


def in_publish_order(published: Published) -> None:
    """Per ticker, timestamps only move forward; `received_at` grows across every tick."""
    stamps = published.stamps()
    assert stamps == sorted(set(stamps)), "a tick older than one already published, or twice"
    received = [e.received_at for e in published.events if isinstance(e, Tick)]
    assert all(a < b for a, b in itertools.pairwise(received))


@pytest.mark.parametrize("spacing", [60, 1], ids=["a-minute", "a-second-vs-20-ticks"])
async def test_a_short_outage_at_coarse_spacing_is_a_recorded_and_published_gap(
    database: Database, simulator_factory: Any, start_ingest: StartIngest, spacing: int
) -> None:
    # Deribit-like, a point a minute; or a point a second while the index ticks 20 times.
    simulator = await simulator_factory(chart_spacing=spacing)
    ingest = await start_ingest(database, {TICKER}, on=simulator)
    published = Published(ingest)
    before = await outage(simulator, published)
    await eventually(lambda: bool(published.gaps()), what="a gap event")
    [gap] = published.gaps()
    assert gap.from_ts == before + 1
    assert gap.reason.startswith(HISTORY_CHECKED) and f"{spacing} s apart" in gap.reason
    await eventually(lambda: published.stamps()[-1] > gap.to_ts + 500, what="ticks after")
    assert unaccounted(simulator, published, before, published.stamps()[-1]) == []
    missed = [ts for ts, _ in simulator.produced(TICKER, before, gap.to_ts)]
    assert missed and not set(missed) & set(published.stamps())  # no coarse point as a tick
    in_publish_order(published)

    async def recorded() -> bool:
        async with database.reading() as connection:
            stored = await PriceRepository(connection, database.tables).gaps_between(
                TICKER, before, gap.to_ts
            )
        return [(g.from_ts, g.to_ts) for g in stored] == [(gap.from_ts, gap.to_ts)]

    await eventually_async(recorded, what="the gap in the store")


async def test_an_outage_ends_at_its_first_live_tick_not_at_our_connect(
    database: Database, simulator_factory: Any, start_ingest: StartIngest
) -> None:
    # A slow index: the backfill is done long before the first tick after the reconnect, and
    # ticks Deribit stamps between our connect and that tick (the subscribe still on its way)
    # must lie inside the gap, while the first tick itself must not.
    simulator = await simulator_factory(chart_spacing=60, tick_interval=0.8)
    ingest = await start_ingest(database, {TICKER}, on=simulator)
    published = Published(ingest)
    await eventually(lambda: len(published.stamps()) >= 2, what="ticks before the outage")
    await sim_control(
        simulator, ("sim/refuse_connections", {"seconds": 0.3}), ("sim/drop_connections", {})
    )
    before = published.stamps()[-1]
    await eventually(lambda: published.stamps()[-1] > before + 2000, what="ticks after")
    [gap] = published.gaps()
    after = min(ts for ts in published.stamps() if ts > before)
    assert (gap.from_ts, gap.to_ts) == (before + 1, after - 1)
    assert unaccounted(simulator, published, before, published.stamps()[-1]) == []
    in_publish_order(published)


@pytest.mark.parametrize("with_writer", [True, False], ids=["embedded", "distributed"])
async def test_at_fine_spacing_every_missed_tick_is_published_in_order(
    database: Database, simulator: Simulator, start_ingest: StartIngest, with_writer: bool
) -> None:
    ingest = await start_ingest(database, {TICKER, "eth_usd"}, with_writer=with_writer)
    published = Published(ingest)
    before = await outage(simulator, published)
    await eventually(lambda: published.stamps()[-1] > before + 2500, what="ticks after")
    first, last = published.stamps()[0], published.stamps()[-1]
    assert published.stamps() == [ts for ts, _ in simulator.produced(TICKER, first - 1, last)]
    assert published.gaps() == []
    in_publish_order(published)


async def test_ticks_that_overtake_the_subscribe_answer_are_held_too(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    ingest = await start_ingest(database, {TICKER})
    published = Published(ingest)
    # Replies lag up to 400 ms behind notifications: after the reconnect, ticks arrive before
    # the subscribe answer, so before the connection says it is connected.
    await sim_control(simulator, ("sim/set_latency", {"ms": 0, "jitter_ms": 400}))
    before = await outage(simulator, published)
    await eventually(lambda: published.stamps()[-1] > before + 3000, what="ticks after")
    first, last = published.stamps()[0], published.stamps()[-1]
    assert published.stamps() == [ts for ts, _ in simulator.produced(TICKER, first - 1, last)]
    in_publish_order(published)


async def test_a_drop_during_a_backfill_adds_its_window_and_loses_nothing(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    blocked, release = asyncio.Event(), asyncio.Event()

    def gated(source: ChartSource) -> ChartSource:
        async def fetch(ticker: str, range_name: str) -> list[Any]:
            if blocked.is_set():
                await release.wait()  # the backfill is still running at the second drop
            return await source(ticker, range_name)

        return fetch

    ingest = await start_ingest(database, {TICKER}, history=gated)
    published = Published(ingest)
    blocked.set()
    before = await outage(simulator, published, seconds=0.5)
    await eventually(lambda: ingest.connection.reconnects > 0, what="the drop seen")
    await eventually(lambda: ingest.connection.connected, what="connected again")
    reconnects = ingest.connection.reconnects
    await eventually(lambda: simulator.history(TICKER)[-1][0] > before + 1500, what="ticks")
    assert published.stamps()[-1] == before  # held while the backfill runs
    await sim_control(
        simulator, ("sim/refuse_connections", {"seconds": 0.5}), ("sim/drop_connections", {})
    )
    await eventually(
        lambda: ingest.connection.reconnects > reconnects and ingest.connection.connected,
        what="the second reconnect",
    )
    release.set()
    await eventually(lambda: published.stamps()[-1] > before + 3000, what="ticks after")
    first, last = published.stamps()[0], published.stamps()[-1]
    assert published.stamps() == [ts for ts, _ in simulator.produced(TICKER, first - 1, last)]
    assert published.gaps() == []
    in_publish_order(published)


@pytest.mark.parametrize(
    "bound", [{"hold_timeout": 0.5}, {"max_held": 5}], ids=["timeout", "count"]
)
async def test_a_stuck_backfill_releases_the_held_ticks_after_its_gap(
    database: Database, simulator: Simulator, start_ingest: StartIngest, bound: dict[str, Any]
) -> None:
    stuck = asyncio.Event()

    def hanging(source: ChartSource) -> ChartSource:
        async def fetch(ticker: str, range_name: str) -> list[Any]:
            if stuck.is_set():
                await asyncio.Event().wait()  # history never answers
            return await source(ticker, range_name)

        return fetch

    ingest = await start_ingest(database, {TICKER}, history=hanging, **bound)
    published = Published(ingest)
    stuck.set()
    before = await outage(simulator, published)
    await eventually(lambda: bool(published.gaps()), what="the gap after giving up")
    [gap] = published.gaps()
    assert gap.from_ts == before + 1 and gap.reason.startswith(FAILED_PREFIX)
    await eventually(lambda: published.stamps()[-1] > gap.to_ts + 500, what="released ticks")
    after_gap = published.events.index(gap)
    assert [t.timestamp for t in published.ticks()][-1] > gap.to_ts
    assert all(e.timestamp > gap.to_ts for e in published.events[after_gap:] if isinstance(e, Tick))
    assert unaccounted(simulator, published, before, published.stamps()[-1]) == []
    in_publish_order(published)
