"""Live ingest from the simulator into the store, through upstream faults and a database outage."""

import asyncio
from datetime import UTC, datetime

from sqlalchemy import select

from __tests__.helpers import eventually, eventually_async
from __tests__.prices.conftest import StartIngest
from __tests__.servers import PostgresServer
from __tests__.simulated import sim_control
from cryptomarket.core.db import Database, urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.streaming.bus import Event, UpstreamStatus
from cryptomarket.users.repository import UserRepository


async def stored(database: Database, ticker: str) -> list[int]:
    table = database.tables.price_tickers
    async with database.reading() as connection:
        result = await connection.execute(
            select(table.c.timestamp).where(table.c.ticker == ticker).order_by(table.c.timestamp)
        )
        return list(result.scalars())


def sent_between(simulator: Simulator, ticker: str, first: int, last: int) -> list[int]:
    return [ts for ts, _ in simulator.history(ticker) if first <= ts <= last]


async def every_sent_tick_is_stored_once(
    database: Database, simulator: Simulator, ticker: str, after: int
) -> None:
    """Wait until the store holds exactly the simulator's ticks, from its first to past `after`."""
    latest: list[int] = []

    async def complete() -> bool:
        latest[:] = await stored(database, ticker)
        return (
            bool(latest)
            and latest[-1] > after
            and latest == sent_between(simulator, ticker, latest[0], latest[-1])
        )

    try:
        await eventually_async(complete, timeout=15, what="every tick stored")
    except AssertionError:
        expected = sent_between(simulator, ticker, latest[0], latest[-1]) if latest else []
        missing = sorted(set(expected) - set(latest))
        raise AssertionError(f"{len(missing)} ticks missing, first {missing[:5]}") from None


async def test_ticks_missed_during_a_drop_are_backfilled(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    ingest = await start_ingest(database, {"btc_usd"})
    statuses: list[str] = []

    def on_event(event: Event) -> None:
        if isinstance(event, UpstreamStatus):
            statuses.append(event.state)

    ingest.bus.subscribe(on_event)
    await eventually_async(
        lambda: _count_at_least(database, "btc_usd", 10), what="ticks stored before the drop"
    )
    # Cut the upstream and keep it out for a second: about 20 ticks happen unseen.
    await sim_control(
        simulator, ("sim/refuse_connections", {"seconds": 1}), ("sim/drop_connections", {})
    )
    dropped_at = simulator.history("btc_usd")[-1][0]
    await eventually(lambda: statuses[-1:] == ["connected"], what="reconnected")
    assert "reconnecting" in statuses
    await every_sent_tick_is_stored_once(database, simulator, "btc_usd", after=dropped_at + 2000)


async def _count_at_least(database: Database, ticker: str, count: int) -> bool:
    return len(await stored(database, ticker)) >= count


async def test_a_database_restart_during_ingest_loses_nothing(
    postgres_server: PostgresServer, simulator: Simulator, start_ingest: StartIngest
) -> None:
    postgres_server.create_database("ingest_outage")
    url = postgres_server.url(database="ingest_outage")
    upgrade(urls_for(url).sync_url)
    database = Database(url)
    try:
        ingest = await start_ingest(database, {"eth_usd"})
        await eventually_async(lambda: _count_at_least(database, "eth_usd", 10), what="first ticks")
        await asyncio.to_thread(postgres_server.stop)
        await eventually(lambda: not ingest.writer.healthy, what="the writer to see the outage")
        down_since = simulator.history("eth_usd")[-1][0]
        await eventually(
            lambda: simulator.history("eth_usd")[-1][0] > down_since + 1000,
            what="a second of ticks while the database is down",
        )
        await asyncio.to_thread(postgres_server.start)
        await every_sent_tick_is_stored_once(
            database, simulator, "eth_usd", after=down_since + 2000
        )
        assert ingest.writer.dropped == 0
    finally:
        await database.dispose()
        if not postgres_server.running:
            postgres_server.start()
        postgres_server.drop_database("ingest_outage")


async def store_subscription(database: Database, user: str, ticker: str, *, add: bool) -> None:
    now = datetime.now(UTC)
    async with database.transaction() as connection:
        repository = UserRepository(connection, database.tables)
        if add:
            await repository.claim(
                user, client_id=user, secret=b"-", account_id=1, profile={}, now=now
            )
            await repository.subscribe(user, ticker, None, now)
        else:
            await repository.unsubscribe(user, [ticker])


async def test_upstream_channels_follow_the_stored_subscriptions(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    ingest = await start_ingest(database, {"btc_usd"})
    await ingest.connection.wait_ready()
    channel = "deribit_price_index.sol_usdc"

    for user in ("alice", "bob"):
        await store_subscription(database, user, "sol_usdc", add=True)
        await ingest.acquire("sol_usdc")
    assert channel in ingest.connection.channels
    assert simulator.calls["public/subscribe"] == 2  # the tracked set, then sol_usdc once

    await store_subscription(database, "alice", "sol_usdc", add=False)
    await ingest.release("sol_usdc")
    assert channel in ingest.connection.channels
    assert simulator.calls["public/unsubscribe"] == 0

    await store_subscription(database, "bob", "sol_usdc", add=False)
    await ingest.release("sol_usdc")
    assert channel not in ingest.connection.channels
    assert simulator.calls["public/unsubscribe"] == 1

    await store_subscription(database, "alice", "btc_usd", add=True)
    await ingest.acquire("btc_usd")
    await store_subscription(database, "alice", "btc_usd", add=False)
    await ingest.release("btc_usd")
    await ingest.release("btc_usd")  # more releases than acquires: the store decides
    assert "deribit_price_index.btc_usd" in ingest.connection.channels  # tracked
    assert simulator.calls["public/unsubscribe"] == 1
    assert ingest.tickers == {"btc_usd"}


async def test_a_subscribe_answered_with_an_error_is_asked_again(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    # Deribit answers the subscribe with an error (maintenance): the channel is not subscribed,
    # so it must not stay in the set every later change and reconnect trusts, and the ingest
    # asks again until Deribit takes it; a user's prices start then, not at the next reconnect.
    ingest = await start_ingest(database, {"btc_usd"})
    await ingest.connection.wait_ready()
    ingest.resubscribe_after = 0.2
    failing = {"code": 11051, "seconds": 1, "methods": ["public/subscribe"]}
    await sim_control(simulator, ("sim/fail_requests", failing))
    await store_subscription(database, "alice", "sol_usdc", add=True)
    await ingest.acquire("sol_usdc")
    channel = "deribit_price_index.sol_usdc"
    assert channel not in ingest.connection.channels
    await eventually(lambda: channel in ingest.connection.channels, timeout=10, what="asked again")
    await eventually_async(
        lambda: _has_ticks(database, "sol_usdc"), timeout=10, what="its ticks stored"
    )


async def _has_ticks(database: Database, ticker: str) -> bool:
    return bool(await stored(database, ticker))


async def test_an_unsubscribe_answered_with_an_error_is_asked_again(
    database: Database, simulator: Simulator, start_ingest: StartIngest
) -> None:
    # Deribit refuses the unsubscribe (maintenance): it still sends the channel, so the set must
    # still say so, and the ingest asks again until it is gone upstream.
    ingest = await start_ingest(database, {"btc_usd"})
    await ingest.connection.wait_ready()
    ingest.resubscribe_after = 0.2
    await store_subscription(database, "alice", "sol_usdc", add=True)
    await ingest.acquire("sol_usdc")
    channel = "deribit_price_index.sol_usdc"
    await eventually_async(
        lambda: _has_ticks(database, "sol_usdc"), timeout=10, what="its ticks stored"
    )
    failing = {"code": 11051, "seconds": 1, "methods": ["public/unsubscribe"]}
    await sim_control(simulator, ("sim/fail_requests", failing))
    await store_subscription(database, "alice", "sol_usdc", add=False)
    await ingest.release("sol_usdc")
    assert channel in ingest.connection.channels  # refused: still subscribed upstream
    await eventually(lambda: channel not in ingest.connection.channels, timeout=10, what="gone")

    def upstream() -> bool:  # as the exchange sees it: asked again, or a new socket's replay
        sessions = simulator._state.sessions.values()
        return any(channel in session.subscriptions and not session.closing for session in sessions)

    await eventually(lambda: not upstream(), timeout=10, what="gone upstream")
    # A tick of it still on its way (sent before Deribit took the unsubscribe) is not ingested.
    received = ingest.ticks_in
    late = {"index_name": "sol_usdc", "price": 1.0, "timestamp": 2**41}
    ingest._on_notification(channel, late)
    assert ingest.ticks_in == received and ingest.last_seen.get("sol_usdc") != 2**41
