"""Index prices, their history and the price channel (reference §5, §6, §10)."""

import itertools

from cryptomarket.deribit.simulator.indexes import INDEX_NAMES
from cryptomarket.deribit.simulator.market import MINUTE_MS, Market

BTC = "deribit_price_index.btc_usd"
ETH = "deribit_price_index.eth_usd"


def invalid(reason: str, param: str) -> dict:
    return {"message": "Invalid params", "code": -32602, "data": {"reason": reason, "param": param}}


async def test_get_index_price(simulator, connect):
    client = await connect(simulator)
    result = await client.result("public/get_index_price", {"index_name": "btc_usd"})
    assert set(result) == {"index_price", "estimated_delivery_price"}
    assert result["index_price"] == result["estimated_delivery_price"] > 0
    assert await client.error("public/get_index_price", {"index_name": "nope_usd"}) == invalid(
        "invalid index", "index_name"
    )
    assert await client.error("public/get_index_price", {}) == invalid(
        "value is required", "index_name"
    )


async def test_get_index_price_names(simulator, connect):
    client = await connect(simulator)
    names = await client.result("public/get_index_price_names")
    assert len(names) == 47 == len(INDEX_NAMES)
    assert {"name": "btc_usd"} in names and {"name": "sol_usdc"} in names
    assert {"name": "drbfix-eth_usdc"} in names
    extended = await client.result("public/get_index_price_names", {"extended": True})
    assert extended[0] == {
        "name": "btc_usd",
        "future_combo_creation_enabled": True,
        "option_combo_creation_enabled": True,
    }


async def test_subscribe_acks_known_channels_only(simulator, connect):
    client = await connect(simulator)
    acked = await client.result(
        "public/subscribe",
        {"channels": [BTC, "deribit_price_index.zzz", "ticker.BTC-1JAN99.100ms", BTC]},
    )
    assert acked == [BTC]
    data = await client.tick(BTC)
    assert set(data) == {"index_name", "price", "timestamp"}
    assert data["index_name"] == "btc_usd"
    assert isinstance(data["price"], float) and type(data["timestamp"]) is int
    error = await client.error("public/subscribe", {})
    assert error["data"] == {"reason": "value is required", "param": "channels"}


async def test_notification_frame_shape(simulator, connect):
    client = await connect(simulator)
    await client.result("public/subscribe", {"channels": [ETH]})
    frame = await client.wait_for(lambda f: f.get("method") == "subscription")
    assert set(frame) == {"jsonrpc", "method", "params"}
    assert frame["jsonrpc"] == "2.0"
    assert set(frame["params"]) == {"channel", "data"}
    assert frame["params"]["channel"] == ETH


async def test_resubscribing_never_doubles_delivery(simulator, connect):
    client = await connect(simulator)
    assert await client.result("public/subscribe", {"channels": [BTC]}) == [BTC]
    assert await client.result("public/subscribe", {"channels": [BTC]}) == [BTC]
    timestamps = [(await client.tick(BTC))["timestamp"] for _ in range(10)]
    assert timestamps == sorted(set(timestamps))  # strictly increasing, none twice


async def test_unsubscribe_returns_what_was_removed(simulator, connect):
    client = await connect(simulator)
    await client.result("public/subscribe", {"channels": [BTC, ETH]})
    removed = await client.result(
        "public/unsubscribe", {"channels": [ETH, "deribit_price_index.sol_usdc"]}
    )
    assert removed == [ETH]
    assert await client.result("public/unsubscribe", {"channels": [ETH]}) == []
    await client.tick(BTC)
    client.discard_pending()
    assert await client.result("public/unsubscribe_all") == "ok"
    # After the answer, no tick can follow: everything was removed before it was sent.
    frame = await client.request("public/test")
    assert not [f for f in client.pending if f.get("method") == "subscription"], frame


async def test_each_tick_is_recorded_in_history_and_the_fine_1h_chart(simulator, connect):
    client = await connect(simulator)
    await client.result("public/subscribe", {"channels": [BTC]})
    seen = [await client.tick(BTC) for _ in range(5)]
    history = simulator.history("btc_usd")
    for data in seen:
        assert (data["timestamp"], data["price"]) in history
    chart = await client.result(
        "public/get_index_chart_data", {"index_name": "btc_usd", "range": "1h"}
    )
    assert [tuple(point) for point in chart[: len(history)]] == history  # every tick, exactly
    assert simulator.price("btc_usd") == simulator.history("btc_usd")[-1][1]


async def test_longer_chart_ranges_are_full_and_chronological(simulator, connect):
    client = await connect(simulator)
    expected = {"1d": (1440, MINUTE_MS), "2d": (2880, MINUTE_MS), "1m": (720, 3_600_000),
                "1y": (365, 86_400_000)}  # fmt: skip
    for chart_range, (count, spacing) in expected.items():
        chart = await client.result(
            "public/get_index_chart_data", {"index_name": "eth_usd", "range": chart_range}
        )
        assert count <= len(chart) <= count + 1, chart_range
        stamps = [ts for ts, _ in chart]
        assert all(b - a == spacing for a, b in itertools.pairwise(stamps)), chart_range
        assert all(ts % spacing == 0 and price > 0 for ts, price in chart)
    everything = await client.result(
        "public/get_index_chart_data", {"index_name": "eth_usd", "range": "all"}
    )
    assert len(everything) > 365
    again = await client.result(
        "public/get_index_chart_data", {"index_name": "eth_usd", "range": "all"}
    )
    assert again[:-1] == everything[:-1]  # the synthetic past does not change


async def test_chart_data_errors(simulator, connect):
    client = await connect(simulator)
    error = await client.error(
        "public/get_index_chart_data", {"index_name": "btc_usd", "range": "5m"}
    )
    assert error == invalid("invalid range", "range")
    error = await client.error("public/get_index_chart_data", {"index_name": "x", "range": "1d"})
    assert error == invalid("invalid index", "index_name")


def test_the_walk_is_seeded_and_moves_a_little():
    one, two = (Market(seed=7, tick_interval=1.0, started_ms=0) for _ in range(2))
    first = [one.tick("btc_usd", 1000 + n, 1.0)[1] for n in range(50)]
    assert first == [two.tick("btc_usd", 1000 + n, 1.0)[1] for n in range(50)]
    steps = [abs(b / a - 1) for a, b in itertools.pairwise(first)]
    assert max(steps) < 0.005 and any(steps)
    other = Market(seed=8, tick_interval=1.0, started_ms=0)
    assert [other.tick("btc_usd", 1000 + n, 1.0)[1] for n in range(50)] != first
    # Each index walks on its own: ticking another one in between changes nothing.
    three = Market(seed=7, tick_interval=1.0, started_ms=0)
    mixed = []
    for n in range(50):
        three.tick("eth_usd", 1000 + n, 0.7)
        mixed.append(three.tick("btc_usd", 1000 + n, 1.0)[1])
    assert mixed == first


def test_timestamps_strictly_increase_even_with_a_frozen_clock():
    market = Market(seed=1, tick_interval=0.001, started_ms=0)
    stamps = [market.tick("btc_usd", 5000, 0.001)[0] for _ in range(5)]
    assert stamps == [5000, 5001, 5002, 5003, 5004]
