"""Live market data: one upstream connection, reference-counted channels, ticks to bus and store.

Tracked tickers are always subscribed; any other ticker is subscribed while someone watches it
(`acquire` / `release`), so Deribit sees one subscription per ticker, never one per user. After
every (re)connect, and at start, the ticks missed while down are fetched from Deribit's history
(`backfill.fill_window`) and what Deribit no longer has is recorded as a gap.

Embedded mode hands ticks to a writer (the store) and to the in-process bus. The ingest process of
distributed mode has no writer: the Redis bus carries every tick, backfilled ones too, to the
replicas and to the stream the persist job writes from.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from cryptomarket.core.db import Database
from cryptomarket.deribit.connection import ConnectionState, DeribitConnection
from cryptomarket.deribit.errors import DeribitError, DeribitTransportError
from cryptomarket.prices.backfill import ChartSource, fill_window
from cryptomarket.prices.models import CHANNEL_PREFIX, Gap, Tick, channel_of
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.writer import TickWriter
from cryptomarket.streaming.bus import Event, upstream_status
from cryptomarket.users.repository import UserRepository

logger = logging.getLogger("cryptomarket.prices.ingest")


class Publisher(Protocol):
    def publish(self, event: Event) -> None: ...


class Ingest:
    def __init__(
        self,
        connection: DeribitConnection,
        writer: TickWriter | None,
        bus: Publisher,
        *,
        database: Database,
        history: ChartSource,
        tracked: Iterable[str] = (),
        stale_after: float = 10.0,
    ) -> None:
        self.connection = connection
        self.writer = writer
        self.bus = bus
        self.database = database
        self.history = history
        self.tracked = frozenset(tracked)
        self.stale_after = stale_after
        self.status = "connecting"
        self.last_seen: dict[str, int] = {}  # newest Deribit timestamp per ticker
        self.ticks_in = 0  # ticks received (for /metrics)
        self._refs: Counter[str] = Counter()  # stored subscribers per ticker, as last read
        self._locks: dict[str, asyncio.Lock] = {}
        self._last_tick_at = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._removers = [
            connection.on_notification(self._on_notification),
            connection.on_state(self._on_state),
        ]

    @property
    def tickers(self) -> frozenset[str]:
        """Every ticker ingested now."""
        return self.tracked | frozenset(self._refs)

    async def start(self) -> None:
        """Learn where the store stops, subscribe the tracked tickers and connect."""
        try:
            async with self.database.reading() as connection:
                repository = PriceRepository(connection, self.database.tables)
                for ticker in self.tracked:
                    last = await repository.last_timestamp(ticker)
                    if last is not None:
                        self.last_seen[ticker] = max(last, self.last_seen.get(ticker, 0))
        except Exception as error:  # the store may be down; ingest goes on
            logger.warning("could not read the newest stored ticks: %s", type(error).__name__)
        await self.connection.subscribe(channel_of(ticker) for ticker in sorted(self.tracked))
        self.connection.start()
        self._spawn(self._watch_staleness())

    async def stop(self) -> None:
        for remove in self._removers:
            remove()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.connection.close()

    # -- watchers: the upstream channels follow the stored subscriptions ----------------------

    async def acquire(self, ticker: str) -> None:
        """A subscription of `ticker` was stored: follow the store. If the store cannot be
        read now, the channel is kept (a leak until the next change beats a user without
        prices). Never raises: the channel is in the connection's set, which reconnects replay."""
        await self._recount(ticker, unreadable=max(1, self._refs[ticker]))

    async def release(self, ticker: str) -> None:
        """A subscription of `ticker` was removed: follow the store (the channel stays while
        anyone still watches it, and when the store cannot be read)."""
        await self._recount(ticker, unreadable=self._refs[ticker])

    async def follow(self, counts: dict[str, int]) -> None:
        """Set the watcher counts to `counts` (recounted from the store), subscribing and
        unsubscribing upstream only the difference."""
        for ticker in sorted(set(self._refs) | set(counts)):
            async with self._ticker_lock(ticker):
                await self._set_count(ticker, counts.get(ticker, 0))

    async def _recount(self, ticker: str, *, unreadable: int) -> None:
        """Set `ticker`'s count from the store, one change of a ticker at a time: the last
        recount reads after every committed change whose recount came before it, so the count
        (and the channel) always end as what is stored, whatever order the callers run in."""
        async with self._ticker_lock(ticker):
            try:
                async with self.database.reading() as connection:
                    repository = UserRepository(connection, self.database.tables)
                    count = await repository.subscribers_of(ticker)
            except Exception as error:  # the store may be down: keep what we have
                logger.warning("%s: watchers not recounted: %s", ticker, type(error).__name__)
                count = unreadable
            await self._set_count(ticker, count)

    async def _set_count(self, ticker: str, count: int) -> None:
        if count > 0:
            self._refs[ticker] = count
        else:
            self._refs.pop(ticker, None)
        if ticker in self.tracked:
            return
        # The connection's set says what is upstream; both calls are no-ops when it agrees.
        channel = channel_of(ticker)
        if count > 0 and channel not in self.connection.channels:
            await self._change(self.connection.subscribe, ticker)
        elif count == 0 and channel in self.connection.channels:
            await self._change(self.connection.unsubscribe, ticker)

    def _ticker_lock(self, ticker: str) -> asyncio.Lock:
        # One per ticker ever watched: bounded by Deribit's index list.
        return self._locks.setdefault(ticker, asyncio.Lock())

    async def _change(self, change: Callable[[list[str]], Awaitable[object]], ticker: str) -> None:
        try:
            await change([channel_of(ticker)])
        except (DeribitError, DeribitTransportError) as error:
            logger.warning("%s: upstream channel change failed: %s", ticker, error)

    # -- upstream events --------------------------------------------------------------------

    def _on_notification(self, channel: str, data: Any) -> None:
        if not channel.startswith(CHANNEL_PREFIX) or not isinstance(data, dict):
            return
        ticker = channel.removeprefix(CHANNEL_PREFIX)
        try:
            price, timestamp = float(data["price"]), int(data["timestamp"])
        except (KeyError, TypeError, ValueError):
            logger.warning("ignored a malformed tick on %s", channel)
            return
        if not math.isfinite(price) or timestamp <= 0:
            logger.warning("ignored an impossible tick on %s", channel)
            return
        tick = Tick(ticker, price, timestamp)
        self.ticks_in += 1
        self.last_seen[ticker] = max(timestamp, self.last_seen.get(ticker, 0))
        self._last_tick_at = time.monotonic()
        if self.status == "stale":
            self._set_status("connected")
        if self.writer is not None:
            self.writer.add(tick)
        self.bus.publish(tick)

    def _on_state(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED:
            self._last_tick_at = time.monotonic()
            self._set_status("connected")
            until = int(time.time() * 1000)
            for ticker in sorted(self.tickers):
                since = self.last_seen.get(ticker)
                if since is not None:
                    self._spawn(self._backfill(ticker, since, until))
        elif state in (ConnectionState.CONNECTING, ConnectionState.RECONNECTING):
            self._set_status(state.value)

    async def _backfill(self, ticker: str, since: int, until: int) -> None:
        try:
            filled, gap = await fill_window(self.history, ticker, since, until)
        except Exception as error:  # must not vanish with its task: say so, and record the gap
            logger.exception("%s: backfill of %d..%d failed", ticker, since, until)
            reason = f"backfill failed: {type(error).__name__}"
            filled, gap = [], Gap(ticker, since + 1, until - 1, reason)
        for tick in filled:
            if self.writer is not None:
                self.writer.add(tick)
            else:
                self.bus.publish(tick)  # the stream takes it to the store
        if gap is not None:
            if self.writer is not None:
                self.writer.add_gap(gap)
            self.bus.publish(gap)
        if filled or gap:
            logger.info(
                "%s: backfilled %d tick(s)%s", ticker, len(filled), ", gap recorded" if gap else ""
            )

    async def _watch_staleness(self) -> None:
        """Connected but no tick for `stale_after` seconds: tell the clients the data is stale."""
        while True:
            await asyncio.sleep(min(1.0, self.stale_after / 4))
            quiet = time.monotonic() - self._last_tick_at
            if self.status == "connected" and self.tickers and quiet > self.stale_after:
                self._set_status("stale")

    def _set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            logger.info("upstream %s", status)
            self.bus.publish(upstream_status(status))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if error := task.exception():
            logger.error("ingest task failed: %s", error)
