"""Subscribe and unsubscribe: stored first, then upstream channels and open streams follow."""

from datetime import UTC, datetime
from typing import Protocol

from cryptomarket.core.db import Database
from cryptomarket.core.errors import NotFound
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.service import PriceService
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.subscriptions.schemas import Created, Removed
from cryptomarket.users.repository import UserRepository


class Watchers(Protocol):
    """What follows subscriptions upstream: the ingest's reference counts."""

    async def acquire(self, ticker: str) -> None: ...

    async def release(self, ticker: str) -> None: ...


class NoWatchers:
    """No ingest in this process (distributed mode: the ingest process follows on its own)."""

    async def acquire(self, ticker: str) -> None:
        return None

    async def release(self, ticker: str) -> None:
        return None


class SubscriptionService:
    def __init__(
        self, database: Database, prices: PriceService, hub: StreamHub, watchers: Watchers
    ) -> None:
        self.database = database
        self.prices = prices
        self.hub = hub
        self.watchers = watchers

    async def subscriptions(self, user_id: str) -> dict[str, int | None]:
        async with self.database.reading() as connection:
            return await UserRepository(connection, self.database.tables).subscriptions_of(user_id)

    async def subscribe(self, user_id: str, ticker: str, timer: int | None) -> Created:
        await self.prices.check_ticker(ticker)
        async with self.database.transaction() as connection:
            created, timer = await UserRepository(connection, self.database.tables).subscribe(
                user_id, ticker, timer, datetime.now(UTC)
            )
        await self.load_latest([ticker])
        for stream in self.hub.streams_of(user_id):
            self.hub.subscribe(stream, ticker, timer)
        if created:
            await self.watchers.acquire(ticker)
        return Created(user_id=user_id, ticker=ticker, timer=timer, created=created)

    async def unsubscribe(self, user_id: str, tickers: list[str] | None) -> Removed:
        """Remove the given tickers (all when None); unknown ones are a 404 when named."""
        async with self.database.transaction() as connection:
            removed = await UserRepository(connection, self.database.tables).unsubscribe(
                user_id, tickers
            )
        if tickers is not None and not removed:
            raise NotFound(
                f"{user_id!r} is not subscribed to {', '.join(tickers)}", code="not_subscribed"
            )
        for ticker in removed:
            for stream in self.hub.streams_of(user_id):
                self.hub.unsubscribe(stream, ticker)
        for ticker in removed:
            await self.watchers.release(ticker)
        return Removed(user_id=user_id, removed=removed)

    async def load_latest(self, tickers: list[str]) -> None:
        """Give the hub a latest price for tickers it has not seen live yet (from the store)."""
        missing = [ticker for ticker in tickers if ticker not in self.hub.latest]
        if not missing:
            return
        async with self.database.reading() as connection:
            repository = PriceRepository(connection, self.database.tables)
            for ticker in missing:
                row = await repository.latest(ticker)
                if row is not None:
                    self.hub.remember_latest(Tick(row.ticker, row.price, row.timestamp))
