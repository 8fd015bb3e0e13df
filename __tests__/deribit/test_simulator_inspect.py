"""sim/subscriptions: each other connection's channels, as the exchange sees them."""

from __tests__.helpers import eventually_async

BTC = "deribit_price_index.btc_usd"
ETH = "deribit_price_index.eth_usd"


async def test_subscriptions_lists_each_other_connections_channels(simulator, connect):
    watcher = await connect(simulator)
    idle = await connect(simulator)
    inspector = await connect(simulator)
    await watcher.result("public/subscribe", {"channels": [ETH, BTC]})
    await inspector.result("public/subscribe", {"channels": [BTC]})  # the caller is left out
    listed = await inspector.result("sim/subscriptions")
    assert sorted(c["channels"] for c in listed) == [[], [BTC, ETH]]
    await watcher.result("public/unsubscribe", {"channels": [BTC]})
    listed = await inspector.result("sim/subscriptions")
    assert sorted(c["channels"] for c in listed) == [[], [ETH]]
    await watcher.ws.close()
    await idle.ws.close()

    async def none_left() -> bool:  # the server notices the closes in its own time
        return await inspector.result("sim/subscriptions") == []

    await eventually_async(none_left, timeout=5, what="closed connections unlisted")
