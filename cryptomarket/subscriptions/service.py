"""Subscribe and unsubscribe: stored first, then upstream channels and open streams follow.

In distributed mode each change is also announced on the control channel, so the streams of the
user on other replicas and the ingest process follow it too.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from cryptomarket.core.db import Database
from cryptomarket.core.errors import NotFound, TooMany
from cryptomarket.distributed.control import SubscriptionChange
from cryptomarket.kit.batched import Batched
from cryptomarket.kit.keyed_lock import KeyedLock
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import PriceRepository, tick_of
from cryptomarket.prices.service import PriceService, check_form
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.subscriptions.schemas import Created, Removed
from cryptomarket.users.repository import UserRepository

logger = logging.getLogger("cryptomarket.subscriptions")

LatestSource = Callable[[list[str]], Awaitable[dict[str, Tick]]]


class Watchers(Protocol):
    """What follows subscriptions upstream: the ingest's reference counts. Each call says a
    stored subscription of the ticker was added (acquire) or removed (release); the ingest
    recounts that ticker from the store, so calls that race or arrive out of order still
    leave the count equal to what is stored."""

    async def acquire(self, ticker: str) -> None: ...

    async def release(self, ticker: str) -> None: ...


class NoWatchers:
    """No ingest in this process (distributed mode: the ingest process follows on its own)."""

    async def acquire(self, ticker: str) -> None:
        return None

    async def release(self, ticker: str) -> None:
        return None


class Announcer(Protocol):
    """Tells the other processes about a change (the control channel)."""

    async def announce(self, change: SubscriptionChange) -> None: ...


class SubscriptionService:
    def __init__(
        self,
        database: Database,
        prices: PriceService,
        hub: StreamHub,
        watchers: Watchers,
        *,
        announcer: Announcer | None = None,
        latest: LatestSource | None = None,
        max_per_user: int | None = None,
    ) -> None:
        self.database = database
        self.prices = prices
        self.hub = hub
        self.watchers = watchers
        self.announcer = announcer
        self.latest = latest  # a shared cache of the newest tick per ticker, asked before the store
        self.max_per_user = max_per_user  # MAX_SUBSCRIPTIONS_PER_USER (None: no limit)
        # Users asked for at about once (a storm of reconnecting streams) share one query.
        self._stored: Batched[str, dict[str, int | None]] = Batched(self._subscriptions_of)
        # One change of a user's subscriptions at a time here, from its commit until the open
        # streams follow it: a cancel cannot commit between a create's commit and its apply.
        self._changes = KeyedLock()

    async def subscriptions(self, user_id: str) -> dict[str, int | None]:
        """The user's stored subscriptions (ticker -> own timer), in ticker order."""
        return dict(await self._stored.get(user_id) or {})

    async def _subscriptions_of(self, user_ids: list[str]) -> dict[str, dict[str, int | None]]:
        async with self.database.reading() as connection:
            repository = UserRepository(connection, self.database.tables)
            return await repository.subscriptions_of_users(user_ids)

    async def subscribe(self, user_id: str, ticker: str, timer: int | None) -> Created:
        await self.prices.check_ticker(ticker)
        await self.load_latest([ticker])  # before: nothing may wait between commit and apply
        async with self._changes.hold(user_id):
            async with self.database.transaction() as connection:
                repository = UserRepository(connection, self.database.tables)
                if self.max_per_user is not None:
                    await repository.lock_subscriptions(user_id)
                created, timer = await repository.subscribe(
                    user_id, ticker, timer, datetime.now(UTC)
                )
                if created and self.max_per_user is not None:
                    held = await repository.count_subscriptions(user_id)
                    if held > self.max_per_user:  # raised inside: the insert is rolled back
                        raise TooMany(
                            f"user {user_id!r} already subscribes {held - 1} tickers, the most "
                            f"allowed (MAX_SUBSCRIPTIONS_PER_USER={self.max_per_user}); cancel "
                            "one first",
                            code="too_many_subscriptions",
                        )
            change = SubscriptionChange(user_id, ticker, timer, removed=False)
            self.apply(change)
            if self.announcer is not None:
                await self.announcer.announce(change)
        if created:
            # Shielded: a request cancelled after the commit must still follow the store.
            await asyncio.shield(self.watchers.acquire(ticker))
        return Created(user_id=user_id, ticker=ticker, timer=timer, created=created)

    async def unsubscribe(self, user_id: str, tickers: list[str] | None) -> Removed:
        """Remove the given tickers (all when None); unknown ones are a 404 when named."""
        for ticker in tickers or ():
            check_form(ticker)  # 422: an expired or delisted name is still accepted here
        async with self._changes.hold(user_id):
            async with self.database.transaction() as connection:
                removed = await UserRepository(connection, self.database.tables).unsubscribe(
                    user_id, tickers
                )
            for ticker in removed:
                change = SubscriptionChange(user_id, ticker, None, removed=True)
                self.apply(change)
                if self.announcer is not None:
                    await self.announcer.announce(change)
        if tickers is not None and not removed:
            raise NotFound(
                f"{user_id!r} is not subscribed to {', '.join(tickers)}", code="not_subscribed"
            )
        if removed:
            await asyncio.shield(self._release(removed))
        return Removed(user_id=user_id, removed=removed)

    async def _release(self, tickers: list[str]) -> None:
        for ticker in tickers:
            await self.watchers.release(ticker)

    def apply(self, change: SubscriptionChange) -> None:
        """Make this process's open streams of the user follow a stored change."""
        for stream in self.hub.streams_of(change.user_id):
            if change.removed:
                self.hub.unsubscribe(stream, change.ticker)
            else:
                self.hub.subscribe(stream, change.ticker, change.timer)

    async def apply_announced(self, change: SubscriptionChange) -> None:
        """A change stored by another replica (from the control channel): the open streams
        follow what is stored now, read after the announcement. Announcements of two replicas
        may arrive in another order than their commits; the store's answer cannot."""
        if not self.hub.streams_of(change.user_id):
            return
        await self.load_latest([change.ticker])
        async with self._changes.hold(change.user_id):
            stored = await self.subscriptions(change.user_id)
            if change.ticker in stored:
                followed = SubscriptionChange(
                    change.user_id, change.ticker, stored[change.ticker], removed=False
                )
            else:
                followed = SubscriptionChange(change.user_id, change.ticker, None, removed=True)
            self.apply(followed)

    async def resync_open_streams(self) -> None:
        """Make every open stream follow the stored subscriptions again: after the control
        channel was away, changes made on other replicas meanwhile were never heard here."""
        for user_id in self.hub.user_ids():
            async with self._changes.hold(user_id):
                stored = await self.subscriptions(user_id)
                await self.load_latest(list(stored))
                for stream in self.hub.streams_of(user_id):
                    held = [*stream.timers, *(stream.opening_changes or ())]  # or to be, opening
                    for ticker in [ticker for ticker in held if ticker not in stored]:
                        self.hub.unsubscribe(stream, ticker)
                    for ticker, timer in stored.items():
                        self.hub.subscribe(stream, ticker, timer)

    async def load_latest(self, tickers: list[str]) -> None:
        """Give the hub a latest price for tickers it has not seen live yet (from the shared
        cache when there is one, else from the store)."""
        missing = [ticker for ticker in tickers if ticker not in self.hub.latest]
        if not missing:
            return
        if self.latest is not None:
            try:
                found = await self.latest(missing)
            except Exception as error:  # a cache outage: the store still answers
                logger.warning("latest prices not read from the cache: %s", type(error).__name__)
                found = {}
            for tick in found.values():
                self.hub.remember_latest(tick)
            missing = [ticker for ticker in missing if ticker not in found]
            if not missing:
                return
        async with self.database.reading() as connection:
            repository = PriceRepository(connection, self.database.tables)
            for ticker in missing:
                row = await repository.latest(ticker)
                if row is not None:  # with its publish stamp: the order latest prices go out in
                    self.hub.remember_latest(tick_of(row))
