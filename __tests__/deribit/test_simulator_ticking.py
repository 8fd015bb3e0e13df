"""Each index ticks on its own jittered clock, as Deribit's do; its chart is as coarse as set."""

import itertools
import statistics
from collections import defaultdict

import pytest

from cryptomarket.deribit.simulator.market import MINUTE_MS, Market

CHANNELS = [f"deribit_price_index.{name}" for name in ("btc_usd", "eth_usd", "sol_usdc")]


async def collect(client, count: int) -> dict[str, list[int]]:
    stamps: dict[str, list[int]] = defaultdict(list)
    for _ in range(count):
        frame = await client.wait_for(lambda f: f.get("method") == "subscription")
        stamps[frame["params"]["channel"]].append(frame["params"]["data"]["timestamp"])
    return stamps


async def test_indexes_are_stamped_and_timed_independently(simulator, connect):
    client = await connect(simulator)
    await client.result("public/subscribe", {"channels": CHANNELS})
    stamps = await collect(client, 90)  # about 30 per index at 20 ticks/s
    assert set(stamps) == set(CHANNELS)
    for channel, own in stamps.items():
        assert own == sorted(set(own)), channel  # strictly increasing per index
        name = channel.removeprefix("deribit_price_index.")
        assert own == [ts for ts, _ in simulator.produced(name, own[0] - 1, own[-1])]
        gaps = [b - a for a, b in itertools.pairwise(own)]
        assert len(set(gaps)) > 3, gaps  # jittered, not a fixed beat
    # One index's ticks do not share the other indexes' timestamps, as one round would.
    btc, eth, sol = (set(stamps[c]) for c in CHANNELS)
    assert len(btc & eth) + len(btc & sol) < len(btc) / 2


def test_the_gap_between_ticks_is_jittered_around_the_mean_interval():
    market = Market(seed=5, tick_interval=1.0, started_ms=0)
    gaps = [market.next_interval("btc_usd") for _ in range(2000)]
    assert min(gaps) >= 0.5 and max(gaps) <= 1.5
    assert statistics.mean(gaps) == pytest.approx(1.0, abs=0.03)
    again = Market(seed=5, tick_interval=1.0, started_ms=0)
    assert [again.next_interval("btc_usd") for _ in range(2000)] == gaps  # seeded
    phases = {round(market.first_delay(name), 6) for name in market.index_names}
    assert len(phases) == len(market.index_names)  # indexes start spread over an interval


async def test_latency_and_jitter_never_reorder_one_connections_ticks(simulator, connect):
    client, control = await connect(simulator), await connect(simulator)
    await control.result("sim/set_latency", {"ms": 40, "jitter_ms": 60})
    await client.result("public/subscribe", {"channels": CHANNELS})
    stamps = await collect(client, 60)
    for channel, own in stamps.items():
        name = channel.removeprefix("deribit_price_index.")
        assert own == [ts for ts, _ in simulator.produced(name, own[0] - 1, own[-1])]


async def test_the_1h_chart_is_one_minute_points_by_default(simulator_factory, connect):
    simulator = await simulator_factory(chart_spacing=60)
    client = await connect(simulator)
    await client.result("public/subscribe", {"channels": CHANNELS[:1]})
    for _ in range(5):
        await client.tick(CHANNELS[0])
    chart = await client.result(
        "public/get_index_chart_data", {"index_name": "btc_usd", "range": "1h"}
    )
    stamps = [ts for ts, _ in chart]
    assert 60 <= len(chart) <= 61
    assert all(ts % MINUTE_MS == 0 for ts in stamps)
    assert {b - a for a, b in itertools.pairwise(stamps)} == {MINUTE_MS}
    # The newest point is the average of this minute's ticks so far.
    newest = stamps[-1]
    produced = simulator.produced("btc_usd", newest - 1, newest + MINUTE_MS - 1)
    ticks = [price for _, price in produced]
    if ticks:  # the minute may have just begun with no tick yet
        assert chart[-1][1] == pytest.approx(statistics.mean(ticks), rel=1e-6)


async def test_set_chart_spacing_switches_to_live_ticks_and_back(simulator_factory, connect):
    simulator = await simulator_factory(chart_spacing=60)
    client = await connect(simulator)
    params = {"index_name": "eth_usd", "range": "1h"}
    assert await client.result("sim/set_chart_spacing", {"seconds": 0}) == "ok"
    await client.result("public/subscribe", {"channels": CHANNELS[1:2]})
    last = (await client.tick(CHANNELS[1]))["timestamp"]
    fine = await client.result("public/get_index_chart_data", params)
    assert [tuple(p) for p in fine if p[0] <= last] == simulator.produced("eth_usd", until=last)
    assert await client.result("sim/set_chart_spacing", {"seconds": 5}) == "ok"
    coarse = await client.result("public/get_index_chart_data", params)
    assert {b[0] - a[0] for a, b in itertools.pairwise(coarse)} == {5000}
    for seconds in (0.5, -1, "soon"):
        error = await client.error("sim/set_chart_spacing", {"seconds": seconds})
        assert error["code"] == -32602 and error["data"]["param"] == "seconds"
