"""sim/produced: the simulator's record of every tick it produced, the chaos harness's truth."""

import pytest

from cryptomarket.deribit.simulator.market import HOUR_MS, Market
from cryptomarket.deribit.simulator.record import CHUNK, TickRecord

BTC = "deribit_price_index.btc_usd"


async def test_produced_is_what_the_channel_sent_subscribed_or_not(simulator, connect):
    client = await connect(simulator)
    # Nobody is subscribed yet: the index still ticks, and the record has it.
    unwatched = await client.result("sim/produced", {"index_name": "eth_usd"})
    assert unwatched["index_name"] == "eth_usd" and unwatched["complete"] is True
    await client.result("public/subscribe", {"channels": [BTC]})
    seen = [await client.tick(BTC) for _ in range(6)]
    first, last = seen[0]["timestamp"], seen[-1]["timestamp"]
    answer = await client.result(
        "sim/produced", {"index_name": "btc_usd", "since": first - 1, "until": last}
    )
    assert answer["complete"] is True
    assert answer["ticks"] == [[data["timestamp"], data["price"]] for data in seen]
    # `since` is exclusive, `until` inclusive; without them, everything kept.
    inner = await client.result(
        "sim/produced", {"index_name": "btc_usd", "since": first, "until": last}
    )
    assert inner["ticks"] == answer["ticks"][1:]
    everything = await client.result("sim/produced", {"index_name": "btc_usd"})
    assert answer["ticks"] == [t for t in everything["ticks"] if first <= t[0] <= last]
    stamps = [ts for ts, _ in everything["ticks"]]
    assert stamps == sorted(set(stamps))


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"index_name": "nope"}, "index_name"),
        ({"index_name": "btc_usd", "since": "soon"}, "since"),
        ({"index_name": "btc_usd", "until": 1.5}, "until"),
        ({"index_name": "btc_usd", "since": True}, "since"),
    ],
)
async def test_produced_checks_its_params(simulator, connect, params, param):
    client = await connect(simulator)
    error = await client.error("sim/produced", params)
    assert error["code"] == -32602 and error["data"]["param"] == param


def test_the_record_forgets_whole_chunks_past_its_retention_and_says_so():
    record = TickRecord(keep_ms=10_000)
    for n in range(3 * CHUNK):
        record.append(n * 10, float(n))  # 10 ms apart: 30 s of ticks, 10 s kept
    newest = (3 * CHUNK - 1) * 10
    kept = record.pairs()
    assert kept[-1] == (newest, float(3 * CHUNK - 1))
    assert kept[0][0] <= newest - 10_000  # at least the retention is kept
    assert len(record) == len(kept) < 2 * CHUNK  # and not much more: bounded
    assert not record.complete(None)
    assert not record.complete(record.forgotten_until - 1)
    assert record.complete(record.forgotten_until)
    assert record.at_or_before(kept[0][0] + 15) == kept[1]
    assert record.between(kept[5][0], kept[7][0]) == [list(kept[6]), list(kept[7])]


def test_a_market_records_at_least_its_record_hours():
    market = Market(seed=3, tick_interval=1.0, started_ms=0, record_hours=0.0)  # 1 h at least
    for n in range(1, 8000):  # a tick a second: more than a chunk past the hour
        market.tick("btc_usd", n * 1000, 1.0)
    ticks, complete = market.produced("btc_usd")
    assert not complete
    assert ticks[-1][0] - ticks[0][0] >= HOUR_MS - 2000
    recent, recent_complete = market.produced("btc_usd", since=ticks[-1][0] - HOUR_MS // 2)
    assert recent_complete and recent == [t for t in ticks if t[0] > ticks[-1][0] - HOUR_MS // 2]
