"""Instruments in ingest: an expiry ends the stored subscriptions and the channel, whether Deribit
sends a final frame on the channel, or the channel just falls silent (an instrument that expired
while the gateway was down, or one that is no longer listed at all)."""

import asyncio

import pytest

from __tests__.helpers import eventually_async
from __tests__.prices.conftest import StartIngest
from __tests__.prices.test_ingest import store_subscription
from __tests__.simulated import sim_control
from cryptomarket.core.db import Database
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.instruments.frames import is_final
from cryptomarket.prices import ingest as ingest_module
from cryptomarket.prices.models import Tick
from cryptomarket.streaming.bus import Event
from cryptomarket.users.repository import UserRepository


async def subscribers(database: Database, ticker: str) -> int:
    async with database.reading() as connection:
        return await UserRepository(connection, database.tables).subscribers_of(ticker)


async def test_a_silent_instrument_is_asked_about_and_ended_when_gone(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    expired = simulator.instrument_names("option")[0]
    assert simulator.expire_instrument(expired)  # before the ingest starts: it never sees a frame
    await asyncio.sleep(0.1)  # the simulator's next step moves it to the expired list
    for user, ticker in (("alice", expired), ("bob", "ETH-1JAN20"), ("carol", "BTC-PERPETUAL")):
        await store_subscription(database, user, ticker, add=True)
    ingest = await start_ingest(database, set(), silent_after=0.6)
    finals: list[Tick] = []

    def heard(event: Event) -> None:
        if isinstance(event, Tick) and event.fields is not None and is_final(event):
            finals.append(event)

    ingest.bus.subscribe(heard)  # type: ignore[attr-defined]
    await ingest.connection.wait_ready()
    await ingest.follow({expired: 1, "ETH-1JAN20": 1, "BTC-PERPETUAL": 1})

    async def ended() -> bool:
        return (
            await subscribers(database, expired) == 0
            and await subscribers(database, "ETH-1JAN20") == 0
            and ingest.tickers == {"BTC-PERPETUAL"}  # recounted: their channels released
        )

    await eventually_async(ended, timeout=10, what="the silent instruments ended")
    by_name = {tick.ticker: tick for tick in finals}
    assert (by_name[expired].fields or {}).get("delivery_price") is not None  # its last state
    assert "mark_price" not in (by_name["ETH-1JAN20"].fields or {})  # only a notice
    assert ingest.tickers == {"BTC-PERPETUAL"}  # the live one goes on
    assert f"ticker.{expired}.100ms" not in ingest.connection.channels
    assert await subscribers(database, "BTC-PERPETUAL") == 1


async def test_index_and_instrument_channels_are_counted_together_and_apart(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    ingest = await start_ingest(database, {"btc_usd"})
    await ingest.connection.wait_ready()
    index, instrument = "deribit_price_index.sol_usdc", "ticker.SOL_USDC-PERPETUAL.100ms"
    subscribes = simulator.calls["public/subscribe"]
    for user in ("alice", "bob"):
        for ticker in ("sol_usdc", "SOL_USDC-PERPETUAL"):
            await store_subscription(database, user, ticker, add=True)
            await ingest.acquire(ticker)
    assert {index, instrument} <= ingest.connection.channels
    assert simulator.calls["public/subscribe"] == subscribes + 2  # once each, never per user
    await store_subscription(database, "alice", "SOL_USDC-PERPETUAL", add=False)
    await ingest.release("SOL_USDC-PERPETUAL")
    assert instrument in ingest.connection.channels  # bob still watches it
    await store_subscription(database, "bob", "SOL_USDC-PERPETUAL", add=False)
    await ingest.release("SOL_USDC-PERPETUAL")
    assert instrument not in ingest.connection.channels
    assert index in ingest.connection.channels  # the index of the same name is another count
    assert ingest.tickers == {"btc_usd", "sol_usdc"}

    # Both come back after a reconnect, and ticks of both flow.
    await store_subscription(database, "alice", "SOL_USDC-PERPETUAL", add=True)
    await ingest.acquire("SOL_USDC-PERPETUAL")
    seen: set[str] = set()
    ingest.bus.subscribe(  # type: ignore[attr-defined]
        lambda event: seen.add(event.ticker) if isinstance(event, Tick) else None
    )
    seen.clear()
    await sim_control(simulator, ("sim/drop_connections", {}))

    async def both() -> bool:
        return {"sol_usdc", "SOL_USDC-PERPETUAL"} <= seen and {
            index,
            instrument,
        } <= ingest.connection.channels

    await eventually_async(both, timeout=10, what="both kinds flowing after a reconnect")


async def test_an_instrument_no_longer_watched_leaves_nothing_behind(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    """Daily options come and go for months: what the ingest keeps per instrument must go with
    its last watcher, or it grows with every instrument ever watched."""
    ingest = await start_ingest(database, {"btc_usd"})
    await ingest.connection.wait_ready()
    await store_subscription(database, "alice", "BTC-PERPETUAL", add=True)
    await ingest.acquire("BTC-PERPETUAL")

    async def flowing() -> bool:
        return {"BTC-PERPETUAL", "btc_usd"} <= set(ingest.last_seen)

    await eventually_async(flowing, timeout=10, what="ticks of both")
    await store_subscription(database, "alice", "BTC-PERPETUAL", add=False)
    await ingest.release("BTC-PERPETUAL")
    assert "ticker.BTC-PERPETUAL.100ms" not in ingest.connection.channels
    assert "BTC-PERPETUAL" not in ingest.last_seen
    assert "BTC-PERPETUAL" not in ingest.live_spacing
    assert len(ingest._changing) == 0  # the per-ticker lock went with its last user
    # A catch-up under way when it was released publishes its held ticks after: still nothing
    # kept of it.
    ingest._publish_caught_up(Tick("BTC-PERPETUAL", 1.0, 2**40, fields={"mark_price": 1.0}))
    assert "BTC-PERPETUAL" not in ingest.last_seen
    assert "btc_usd" in ingest.last_seen  # a tracked index keeps where it stands


@pytest.mark.parametrize("answer", ["not_found", "unknown", "before_final"])
async def test_a_silent_expired_instrument_ends_whatever_deribit_answers_of_it(
    database: Database,
    simulator: Simulator,
    start_ingest: StartIngest,
    answer: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What public/ticker says of an expired name is unverified (reference 13.4): 13020, the
    # -32602 of an unknown name, or the frame before the final one (still `open`, its delivery
    # price estimate "expired"), asked again a few times in case the final frame still comes.
    monkeypatch.setattr(ingest_module, "EXPIRED_ASKS", 2)
    expired = simulator.instrument_names("option")[1]
    assert simulator.expire_instrument(expired, ticker_answer=answer)
    await asyncio.sleep(0.1)  # the simulator's next step moves it to the expired list
    await store_subscription(database, "alice", expired, add=True)
    ingest = await start_ingest(database, set(), silent_after=0.4)
    finals: list[Tick] = []
    ingest.bus.subscribe(  # type: ignore[attr-defined]
        lambda event: finals.append(event) if isinstance(event, Tick) else None
    )
    await ingest.connection.wait_ready()
    await ingest.follow({expired: 1})

    async def ended() -> bool:
        return await subscribers(database, expired) == 0 and not ingest.tickers

    await eventually_async(ended, timeout=10, what="the silent instrument ended")
    assert [tick.fields for tick in finals if tick.ticker == expired] == [{"state": "closed"}]
