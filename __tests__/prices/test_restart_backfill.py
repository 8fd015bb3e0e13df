"""An embedded restart backfills every ticker users subscribed, not only the tracked ones."""

from sqlalchemy import select

from __tests__.helpers import eventually, eventually_async
from __tests__.service import running_service
from cryptomarket.core.db import Database
from cryptomarket.deribit.simulator import Simulator

WATCHED = "eth_usd"  # subscribed by a user; TRACKED_TICKERS is btc_usd only


async def stored(url: str, ticker: str) -> list[int]:
    database = Database(url)
    try:
        table = database.tables.price_tickers
        async with database.reading() as connection:
            result = await connection.execute(
                select(table.c.timestamp)
                .where(table.c.ticker == ticker)
                .order_by(table.c.timestamp)
            )
            return list(result.scalars())
    finally:
        await database.dispose()


async def gaps_of(url: str, ticker: str) -> list[tuple[int, int]]:
    database = Database(url)
    try:
        gaps = database.tables.price_gaps
        async with database.reading() as connection:
            result = await connection.execute(
                select(gaps.c.from_ts, gaps.c.to_ts).where(gaps.c.ticker == ticker)
            )
            return [(row.from_ts, row.to_ts) for row in result]
    finally:
        await database.dispose()


async def test_a_restart_backfills_a_subscribed_ticker_too(
    simulator: Simulator, sqlite_url: str
) -> None:
    async with running_service(simulator, sqlite_url) as service:
        alice = service.client_for(await service.sign_in("alice"))
        response = await alice.get(f"/api/v1/market/alice/create_order/{WATCHED}")
        assert response.status_code in (200, 201), response.text

        async def some_stored() -> bool:
            return len(await stored(sqlite_url, WATCHED)) >= 10

        await eventually_async(some_stored, what="ticks of the subscribed ticker stored")
    stopped_at = simulator.history(WATCHED)[-1][0]
    await eventually(
        lambda: simulator.history(WATCHED)[-1][0] > stopped_at + 1000, what="a second unseen"
    )
    async with running_service(simulator, sqlite_url):

        async def past_the_outage() -> bool:
            return (await stored(sqlite_url, WATCHED))[-1] > stopped_at + 1500

        await eventually_async(past_the_outage, what="ticks after the restart")
    kept = await stored(sqlite_url, WATCHED)
    gaps = await gaps_of(sqlite_url, WATCHED)
    unaccounted = [
        ts
        for ts, _ in simulator.produced(WATCHED, kept[0] - 1, kept[-1])
        if ts not in set(kept) and not any(start <= ts <= end for start, end in gaps)
    ]
    assert unaccounted == []
