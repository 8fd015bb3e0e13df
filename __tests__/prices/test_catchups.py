"""Catch-ups on their own (prices/catchup.py): outages that overlap their own deadline."""

import asyncio
from typing import Any

from __tests__.helpers import eventually
from cryptomarket.prices.catchup import Catchups
from cryptomarket.prices.models import Gap, Tick

TICKER = "btc_usd"


async def never_answers(ticker: str, range_name: str) -> Any:
    await asyncio.Event().wait()


def catchups(events: list[Tick | Gap], hold_timeout: float) -> Catchups:
    return Catchups(
        never_answers,
        publish=events.append,
        publish_gap=events.append,
        spacing=lambda ticker: 1_000.0,
        ingested=lambda ticker: True,
        spawn=asyncio.create_task,
        hold_timeout=hold_timeout,
    )


def accounted(events: list[Tick | Gap], first: int, last: int) -> list[int]:
    """Which of the whole seconds from `first` to `last` were published or lie in a gap."""
    gaps = [e for e in events if isinstance(e, Gap)]
    ticks = {e.timestamp for e in events if isinstance(e, Tick)}
    return [
        ts
        for ts in range(first, last + 1, 1_000)
        if ts in ticks or any(g.from_ts <= ts <= g.to_ts for g in gaps)
    ]


async def test_a_deadline_passed_while_the_socket_is_down_again_keeps_the_ticker_held() -> None:
    # Dropped at 1000, back at 5000 (a backfill that never answers), a tick at 6000, dropped
    # again; the hold's deadline passes during that second outage. Ticks 7000 and 8000 of that
    # outage are never received: they must end inside a gap, not vanish because the ticker
    # stopped being held before the socket came back.
    events: list[Tick | Gap] = []
    under_way = catchups(events, hold_timeout=0.05)
    under_way.hold(TICKER, 1_000)
    under_way.catch_up(TICKER, 5_000)
    assert under_way.add(TICKER, Tick(TICKER, 1.0, 6_000))
    under_way.hold(TICKER, 6_000)  # dropped again
    await eventually(lambda: len(events) == 2, what="the deadline's gap and held tick")
    assert TICKER in under_way  # the second outage goes on: still held
    under_way.catch_up(TICKER, 8_200)  # back
    assert under_way.add(TICKER, Tick(TICKER, 1.0, 9_000))  # the first live tick after
    await eventually(lambda: TICKER not in under_way, what="the second deadline")
    assert accounted(events, 2_000, 9_000) == list(range(2_000, 9_001, 1_000))
    assert [e.timestamp for e in events if isinstance(e, Tick)] == [6_000, 9_000]


async def test_a_ticker_released_during_its_catch_up_is_not_remembered_after_it() -> None:
    # Daily options come and go: one released while caught up must leave nothing behind.
    events: list[Tick | Gap] = []
    ingested = {"BTC-8JUN20-8750-P"}
    under_way = Catchups(
        never_answers,
        publish=events.append,
        publish_gap=events.append,
        spacing=lambda ticker: None,
        ingested=lambda ticker: ticker in ingested,
        spawn=asyncio.create_task,
    )
    under_way.hold("BTC-8JUN20-8750-P", 1_000)
    under_way.catch_up("BTC-8JUN20-8750-P", 5_000)
    under_way.add("BTC-8JUN20-8750-P", Tick("BTC-8JUN20-8750-P", 1.0, 6_000))
    ingested.clear()  # released: the ingest forgets it
    under_way.forget("BTC-8JUN20-8750-P")
    under_way.give_up("BTC-8JUN20-8750-P", "released")
    assert [e.timestamp for e in events if isinstance(e, Tick)] == [6_000]  # not lost
    assert under_way.accounted_to == {}
