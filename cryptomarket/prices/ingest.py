"""Live market data: one upstream connection, reference-counted channels, ticks to bus and store.

Tracked tickers are always subscribed; any other ticker is subscribed while someone watches it
(`acquire` / `release`), so Deribit sees one subscription per ticker, never one per user. After
every (re)connect, and at start, the ticks missed while down are fetched from Deribit's history
(`backfill`) and what it cannot fill at live resolution is recorded as a gap.

Each ticker's ticks are published in timestamp order, so a hub that only moves forward sees every
one: while a ticker is caught up its live ticks are held, then the backfilled ticks, the gaps and
the held ticks go out in order (prices/catchup.py). Every tick is stamped (`received_at`) as it is
published, strictly increasing per process.

Embedded mode hands ticks to a writer (the store) and to the in-process bus. The ingest process of
distributed mode has no writer: the Redis bus carries every tick, backfilled ones too, to the
replicas and to the stream the persist job writes from.
"""

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol

from cryptomarket.core.db import Database
from cryptomarket.deribit.connection import ConnectionState, DeribitConnection
from cryptomarket.deribit.errors import (
    DeribitError,
    DeribitTransportError,
    InstrumentNotFound,
    InvalidParams,
)
from cryptomarket.instruments.frames import expiry_notice, is_final, parse_ticker
from cryptomarket.instruments.names import is_instrument
from cryptomarket.kit.keyed_lock import KeyedLock
from cryptomarket.prices.backfill import ChartSource
from cryptomarket.prices.catchup import Catchups
from cryptomarket.prices.kinds import MalformedFrame, channel_of, parse_frame, ticker_of
from cryptomarket.prices.models import Gap, Tick, publish_stamp
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.writer import TickWriter
from cryptomarket.streaming.bus import Event, upstream_status
from cryptomarket.users.repository import UserRepository

logger = logging.getLogger("cryptomarket.prices.ingest")

MAX_LIVE_SPACING_MS = 10_000  # longer between two live ticks is a pause, not their spacing
# A live tick this much later than the ticker's previous one means the feed skipped ticks while
# the socket stayed up (a stall shorter than the heartbeat watchdog): the window between them is
# backfilled like a reconnect's. The simulator spaces ticks 0.5-1.5 x their mean; the floor keeps
# very fast tickers from being judged on a few ms of jitter at the producer.
HOLE_SPACINGS = 3
HOLE_FLOOR_MS = 1_000
# An instrument that sends nothing for this long (it updates ten times a second) is asked about.
SILENT_AFTER = 60.0
EXPIRED_ASKS = 5  # a silent instrument Deribit says expired, without its final frame, is ended
RESUBSCRIBE_AFTER = 5.0  # seconds before a channel change Deribit refused goes again


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
        hold_timeout: float = 15.0,
        max_held: int = 10_000,
        silent_after: float = SILENT_AFTER,
    ) -> None:
        self.connection = connection
        self.writer = writer
        self.bus = bus
        self.database = database
        self.history = history
        self.tracked = frozenset(tracked)
        self.stale_after = stale_after
        self.silent_after = silent_after
        self.status = "connecting"
        self.last_seen: dict[str, int] = {}  # newest Deribit timestamp per ticker
        # How far apart each ticker's live ticks come (ms, a moving average): history spaced
        # much wider is not live resolution, however fast the exchange ticks.
        self.live_spacing: dict[str, float] = {}
        self.ticks_in = 0  # ticks received (for /metrics)
        self._refs: Counter[str] = Counter()  # stored subscribers per ticker, as last read
        self._changing = KeyedLock()  # one change of a ticker's count at a time
        self._last_tick_at = time.monotonic()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._catchups = Catchups(
            history,
            publish=self._publish_caught_up,
            publish_gap=self._publish_gap,
            spacing=self.live_spacing.get,
            ingested=lambda ticker: ticker in self.tickers,
            spawn=self._spawn,
            hold_timeout=hold_timeout,
            max_held=max_held,
        )
        self._spacing_from: dict[str, int] = {}  # per ticker, the live tick before the next
        self._expiring: set[str] = set()  # instruments whose subscriptions are being ended
        # When each watched instrument was last asked about (or first watched), ms.
        self._watched_since: dict[str, float] = {}
        self._retrying: set[str] = set()  # tickers whose failed channel change goes again
        self._asked_expired: dict[str, int] = {}  # silent instrument -> asks that said expired
        self.resubscribe_after = RESUBSCRIBE_AFTER
        self._removers = [
            connection.on_notification(self._on_notification),
            connection.on_state(self._on_state),
        ]

    @property
    def tickers(self) -> frozenset[str]:
        """Every ticker ingested now."""
        return self.tracked | frozenset(self._refs)

    async def start(self) -> None:
        """Learn where the store stops, subscribe the tracked tickers and connect.

        Every ingested ticker is looked up, the watched ones too (acquired or followed before
        start), so a restart backfills what users subscribed, not only the tracked tickers."""
        try:
            async with self.database.reading() as connection:
                repository = PriceRepository(connection, self.database.tables)
                for ticker in sorted(self.tickers):
                    last = await repository.last_timestamp(ticker)
                    if last is not None:
                        self.last_seen[ticker] = max(last, self.last_seen.get(ticker, 0))
        except Exception as error:  # the store may be down; ingest goes on
            logger.warning("could not read the newest stored ticks: %s", type(error).__name__)
        await self.connection.subscribe(channel_of(ticker) for ticker in sorted(self.tracked))
        self.connection.start()
        self._spawn(self._watch_staleness())
        self._spawn(self._watch_silent_instruments())

    async def stop(self) -> None:
        for remove in self._removers:
            remove()
        self._catchups.give_up_all("stopped before it finished")
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
            async with self._changing.hold(ticker):
                await self._set_count(ticker, counts.get(ticker, 0))

    async def _recount(self, ticker: str, *, unreadable: int) -> None:
        """Set `ticker`'s count from the store, one change of a ticker at a time: the last
        recount reads after every committed change whose recount came before it, so the count
        (and the channel) always end as what is stored, whatever order the callers run in."""
        async with self._changing.hold(ticker):
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
            self._forget(ticker)

    async def _change(self, change: Callable[[list[str]], Awaitable[object]], ticker: str) -> None:
        try:
            await change([channel_of(ticker)])
        except (DeribitError, DeribitTransportError) as error:
            logger.warning("%s: upstream channel change failed: %s", ticker, error)
            if ticker not in self._retrying:  # no later change would fix it: ask again
                self._retrying.add(ticker)
                self._spawn(self._change_again(ticker))

    async def _change_again(self, ticker: str) -> None:
        """A channel change Deribit answered with an error (or credit did not allow in time):
        the connection's set says what is upstream still; make it follow the store again."""
        try:
            await asyncio.sleep(self.resubscribe_after)
        finally:
            self._retrying.discard(ticker)
        await self._recount(ticker, unreadable=self._refs.get(ticker, 0))

    # -- upstream events --------------------------------------------------------------------

    def _on_notification(self, channel: str, data: Any) -> None:
        ticker = ticker_of(channel)
        if ticker is None or not self.connection.follows(channel):
            return  # not one we follow (an unsubscribe Deribit has not taken yet)
        try:
            received = parse_frame(ticker, data)
        except MalformedFrame as why:
            logger.warning("ignored a malformed tick on %s: %s", channel, why)
            return
        timestamp = received.timestamp
        self.ticks_in += 1
        previous = self.last_seen.get(ticker, 0)
        self.last_seen[ticker] = max(timestamp, previous)
        self._last_tick_at = time.monotonic()
        if self.status == "stale":
            self._set_status("connected")
        if ticker in self._catchups:
            self._sample_spacing(ticker, timestamp)
            self._catchups.add(ticker, received)
            return
        # A finished catch-up accounted for its window even without a tick at its end.
        known = max(previous, self._catchups.accounted_to.get(ticker, 0))
        if known and self._is_hole(ticker, timestamp - known):
            self._spacing_from[ticker] = timestamp
            logger.info("%s: no tick for %d ms while connected", ticker, timestamp - known)
            self._catchups.fill_hole(ticker, known, received)
            return
        self._sample_spacing(ticker, timestamp)
        self._publish(replace(received, received_at=publish_stamp()))

    def _sample_spacing(self, ticker: str, timestamp: int) -> None:
        """Two ticks in a row of one live stream are a spacing sample; the first tick after
        a start or an outage is not (its distance to the tick before says nothing)."""
        base = self._spacing_from.get(ticker)
        self._spacing_from[ticker] = max(timestamp, base or 0)
        if base is not None and 0 < timestamp - base < MAX_LIVE_SPACING_MS:
            average = self.live_spacing.get(ticker, timestamp - base)
            self.live_spacing[ticker] = 0.9 * average + 0.1 * (timestamp - base)

    def _is_hole(self, ticker: str, elapsed_ms: int) -> bool:
        """A hole: more than HOLE_SPACINGS times the ticker's measured live spacing, and more
        than HOLE_FLOOR_MS, between two of its ticks (Deribit timestamps, so our own stalls do
        not count). A ticker whose spacing is not measured yet (or no longer: unwatched for a
        while) is not judged."""
        spacing = self.live_spacing.get(ticker)
        if spacing is None or ticker not in self.tickers:
            return False
        return elapsed_ms > max(HOLE_FLOOR_MS, HOLE_SPACINGS * spacing)

    def _publish_caught_up(self, tick: Tick) -> None:
        """A backfilled or held tick, stamped already, in order."""
        ticker = tick.ticker
        if ticker in self.tickers or not is_instrument(ticker):  # else released: forgotten
            self.last_seen[ticker] = max(tick.timestamp, self.last_seen.get(ticker, 0))
        self._publish(tick)

    def _publish(self, tick: Tick) -> None:
        """One tick, stamped already, to the store (embedded) and the bus."""
        if self.writer is not None:
            self.writer.add(tick)
        self.bus.publish(tick)
        if tick.fields is not None and is_final(tick) and tick.ticker not in self._expiring:
            self._expiring.add(tick.ticker)
            self._spawn(self._expire(tick.ticker))

    async def _expire(self, ticker: str) -> None:
        """An instrument sent its final frame: every subscription of it ends (the streams were
        told by the frame itself, streaming/hub.py) and its channel is released."""
        logger.info("%s expired: its subscriptions end", ticker)
        try:
            async with self.database.transaction() as connection:
                ended = await UserRepository(connection, self.database.tables).end_ticker(ticker)
            logger.info("%s: %d subscription(s) ended", ticker, len(ended))
        except Exception as error:  # the store may be down: the next recount retries
            logger.warning("%s: subscriptions not ended: %s", ticker, type(error).__name__)
        finally:
            self._expiring.discard(ticker)
        await self._recount(ticker, unreadable=0)
        self._forget(ticker)

    def _forget(self, ticker: str) -> None:
        """An unwatched ticker is not ingested: its next tick after a re-watch is no hole. What
        is kept per instrument goes too, or it would grow with every instrument ever watched
        (index names are few, and their newest timestamp is what a restart's gap starts from)."""
        self.live_spacing.pop(ticker, None)
        self._spacing_from.pop(ticker, None)
        self._watched_since.pop(ticker, None)
        self._asked_expired.pop(ticker, None)
        if is_instrument(ticker):
            self.last_seen.pop(ticker, None)
            self._catchups.forget(ticker)

    def _publish_gap(self, gap: Gap) -> None:
        if self.writer is not None:
            self.writer.add_gap(gap)
        self.bus.publish(gap)

    def _on_state(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED:
            self._last_tick_at = time.monotonic()
            self._set_status("connected")
            until = int(time.time() * 1000)
            for ticker in sorted(self.tickers | self._catchups.tickers):  # released ones end too
                self._catchups.catch_up(ticker, until)
        elif state in (ConnectionState.CONNECTING, ConnectionState.RECONNECTING):
            self._set_status(state.value)
            # Hold from now: a fresh socket's first ticks can come in before it reports
            # CONNECTED, and publishing them would hide the window before them.
            for ticker in sorted(self.tickers):
                self._spacing_from.pop(ticker, None)  # no spacing sample across the outage
                self._catchups.hold(ticker, self.last_seen.get(ticker))

    async def _watch_silent_instruments(self) -> None:
        """An instrument silent for SILENT_AFTER seconds while connected is asked about with
        `public/ticker`: Deribit documents no message when a channel ends, so an instrument
        that expired without a final frame on its channel (or before a restart of ours, its
        channel then acknowledged with nothing) is found here and ended the same way."""
        while True:
            await asyncio.sleep(self.silent_after / 2)
            if self.status != "connected":
                continue
            now = time.time() * 1000
            for ticker in sorted(self.tickers):
                if not is_instrument(ticker) or ticker in self._expiring:
                    continue
                heard = max(
                    self.last_seen.get(ticker, 0), self._watched_since.setdefault(ticker, now)
                )
                if now - heard > self.silent_after * 1000:
                    await self._ask_about(ticker)

    async def _ask_about(self, ticker: str) -> None:
        """What Deribit answers of an expired name is unverified (reference 13.4): an error
        (-32602 or 13020 not_found), its final frame, or its frame from just before (state
        `open`, `estimated_delivery_price` "expired"); each ends it, the last after
        EXPIRED_ASKS asks in a row (the final frame may still come)."""
        self._watched_since[ticker] = time.time() * 1000  # asked: not again before SILENT_AFTER
        try:
            result = await self.connection.call("public/ticker", {"instrument_name": ticker})
        except (InvalidParams, InstrumentNotFound):  # gone (expired) or never listed
            self._end_silent(ticker, "silent and unknown to Deribit")
            return
        except (DeribitError, DeribitTransportError) as error:
            logger.warning("%s: silent, and public/ticker failed: %s", ticker, error)
            return
        tick = parse_ticker(ticker, result) if isinstance(result, dict) else None
        if tick is not None and is_final(tick) and tick.timestamp > self.last_seen.get(ticker, 0):
            logger.info("%s: silent, and expired: its final state published", ticker)
            self.last_seen[ticker] = tick.timestamp
            self._publish(replace(tick, received_at=publish_stamp()))
        elif tick is not None and (tick.fields or {}).get("estimated_delivery_price") == "expired":
            asked = self._asked_expired[ticker] = self._asked_expired.get(ticker, 0) + 1
            if asked >= EXPIRED_ASKS:
                self._end_silent(ticker, f"silent and expired for {asked} asks, no final frame")
        else:
            self._asked_expired.pop(ticker, None)

    def _end_silent(self, ticker: str, why: str) -> None:
        logger.info("%s: %s: ended", ticker, why)
        self._asked_expired.pop(ticker, None)
        self.bus.publish(expiry_notice(ticker, int(time.time() * 1000), publish_stamp()))
        self._expiring.add(ticker)
        self._spawn(self._expire(ticker))

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

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task


def _log_failure(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        if error := task.exception():
            logger.error("ingest task failed: %s", error)
