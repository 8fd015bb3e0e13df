"""A feed that skips ticks while the socket stays up (a `sim/go_silent` shorter than the heartbeat
watchdog): the hole is backfilled like a reconnect's window, or recorded as a gap."""

from collections.abc import Awaitable, Callable

from __tests__.prices.test_backfill_stream import TICKER, every_tick_stream, prices
from __tests__.service import Service, running_service
from __tests__.simulated import sim_control
from __tests__.sse import Event, Stream, open_stream
from cryptomarket.deribit.simulator import Simulator

SILENCE = 1.6  # seconds: above the hole floor (1 s), below the watchdog bound (3 s)


async def through_a_silence(service: Service, stream: Stream) -> tuple[int, list[Event]]:
    """Read a few prices, silence the feed, read on well past it; no reconnect may happen."""
    connection = service.app.state.runtime.ingest.connection
    reconnects = connection.reconnects
    events = [await stream.until("price")]
    while len(prices(events)) < 5:
        events.append(await stream.next_event())
    await sim_control(service.simulator, ("sim/go_silent", {"seconds": SILENCE}))
    before = max(prices(events))
    while not [ts for ts in prices(events) if ts > before + SILENCE * 1000 + 1500]:
        events.append(await stream.next_event())
    assert connection.reconnects == reconnects  # the watchdog never fired
    assert not [e for e in events if e.event == "upstream"]
    return before, events


async def test_fine_history_fills_a_hole_the_socket_never_noticed(service: Service) -> None:
    await sim_control(service.simulator, ("sim/set_chart_spacing", {"seconds": 0}))
    alice = await every_tick_stream(service)
    async with open_stream(alice) as stream:
        _, events = await through_a_silence(service, stream)
    seen = prices(events)
    produced = [ts for ts, _ in service.simulator.produced(TICKER, seen[0] - 1, seen[-1])]
    assert seen == produced  # every one, in order, none twice
    assert not [e for e in events if e.event == "gap"]


async def test_coarse_history_records_a_gap_over_the_hole(
    simulator_factory: Callable[..., Awaitable[Simulator]], sqlite_url: str
) -> None:
    simulator = await simulator_factory(chart_spacing=60)
    async with running_service(simulator, sqlite_url) as service:
        alice = await every_tick_stream(service)
        async with open_stream(alice) as stream:
            before, events = await through_a_silence(service, stream)
        gaps = [e.data for e in events if e.event == "gap" and e.data["ticker"] == TICKER]
        assert len(gaps) == 1 and gaps[0]["from"] == before + 1
        seen = prices(events)
        gap_at = next(i for i, e in enumerate(events) if e.event == "gap")
        assert max(prices(events[:gap_at])) == before
        assert min(prices(events[gap_at:])) > gaps[0]["to"]
        missed = [
            ts
            for ts, _ in simulator.produced(TICKER, seen[0] - 1, seen[-1])
            if ts not in seen and not gaps[0]["from"] <= ts <= gaps[0]["to"]
        ]
        assert missed == []
        silenced = [ts for ts, _ in simulator.produced(TICKER, gaps[0]["from"], gaps[0]["to"])]
        assert len(silenced) > 10  # the silence hid ticks, and the gap covers them
        assert seen == sorted(set(seen))


async def test_normal_jitter_is_no_hole(service: Service) -> None:
    """Ticks 0.5-1.5 x the mean apart over a long run: never a gap, never a backfill."""
    await sim_control(service.simulator, ("sim/set_chart_spacing", {"seconds": 60}))
    alice = await every_tick_stream(service)
    async with open_stream(alice) as stream:
        events = [await stream.until("price")]
        while len(prices(events)) < 150:
            events.append(await stream.next_event())
    seen = prices(events)
    assert not [e for e in events if e.event == "gap"]
    assert seen == [ts for ts, _ in service.simulator.produced(TICKER, seen[0] - 1, seen[-1])]
