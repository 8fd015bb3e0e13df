"""A `timer=0` stream through an upstream drop: every missed tick (fine history) or a gap event
covering them (Deribit-like coarse history), checked against what the simulator produced."""

from collections.abc import Awaitable, Callable

import httpx

from __tests__.service import Service, running_service
from __tests__.simulated import sim_control
from __tests__.sse import Event, Stream, open_stream
from cryptomarket.deribit.simulator import Simulator

TICKER = "btc_usd"


async def every_tick_stream(service: Service) -> httpx.AsyncClient:
    alice = service.client_for(await service.sign_in("alice"))
    response = await alice.get(f"/api/v1/market/alice/create_order/{TICKER}", params={"timer": 0})
    assert response.status_code in (200, 201), response.text
    return alice


async def through_a_drop(simulator: Simulator, stream: Stream) -> tuple[int, list[Event]]:
    """Read a few prices, cut the upstream for a second, and read on until well past it;
    returns the last price read before the cut and every event from the first price on."""
    events = [await stream.until("price")]
    while len([e for e in events if e.event == "price"]) < 5:
        events.append(await stream.next_event())
    before = max(e.data["timestamp"] for e in events if e.event == "price")
    await sim_control(
        simulator, ("sim/refuse_connections", {"seconds": 1}), ("sim/drop_connections", {})
    )
    while not [e for e in events if e.event == "price" and e.data["timestamp"] > before + 2500]:
        events.append(await stream.next_event())
    return before, events


def prices(events: list[Event]) -> list[int]:
    return [
        e.data["timestamp"] for e in events if e.event == "price" and e.data["ticker"] == TICKER
    ]


async def test_a_timer0_stream_receives_every_tick_the_drop_hid(service: Service) -> None:
    alice = await every_tick_stream(service)
    async with open_stream(alice) as stream:
        _, events = await through_a_drop(service.simulator, stream)
    seen = prices(events)
    produced = [ts for ts, _ in service.simulator.produced(TICKER, seen[0] - 1, seen[-1])]
    assert seen == produced  # every one, in order, none twice
    assert not [e for e in events if e.event == "gap"]


async def test_at_coarse_history_a_timer0_stream_gets_a_gap_covering_what_it_missed(
    simulator_factory: Callable[..., Awaitable[Simulator]], sqlite_url: str
) -> None:
    simulator = await simulator_factory(chart_spacing=60)
    async with running_service(simulator, sqlite_url) as service:
        alice = await every_tick_stream(service)
        async with open_stream(alice) as stream:
            before, events = await through_a_drop(simulator, stream)
    seen = prices(events)
    gaps = [e.data for e in events if e.event == "gap" and e.data["ticker"] == TICKER]
    assert len(gaps) == 1 and gaps[0]["from"] == before + 1
    gap_at = next(i for i, e in enumerate(events) if e.event == "gap")
    assert max(prices(events[:gap_at])) == before  # the gap comes before the ticks after it
    assert min(prices(events[gap_at:])) > gaps[0]["to"]
    missed = [
        ts
        for ts, _ in simulator.produced(TICKER, seen[0] - 1, seen[-1])
        if ts not in seen and not gaps[0]["from"] <= ts <= gaps[0]["to"]
    ]
    assert missed == []
    assert seen == sorted(set(seen))
