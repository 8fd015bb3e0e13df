"""The market-event bus across processes, on Redis (distributed mode).

The ingest leader publishes every event once on a pub/sub channel; each API replica receives it and
hands it to its own stream hub (encoding: streaming/redis_codec.py). Ticks and gaps also go to the
Redis stream, from which `Last-Event-ID` replays and the persist job reads. Its entry ids are the
publisher's clock in ms, and it is kept within an hour and within Redis's memory by
distributed/stream_bounds.py, which never trims what the persist job has not stored without
recording it as a gap.

The publisher keeps the newest tick of each ticker under `latest_key(ticker)` for a day (a replica
or a new ingest leader reads it when it has not seen that ticker itself), and the upstream status
under UPSTREAM_STATUS_KEY, rewritten every STATUS_REFRESH seconds: a replica that starts later
reads it instead of waiting for the next change.

Redis may restart under us: publishing buffers a bounded backlog meanwhile (what overflows it is
published as a gap once Redis is back), and the subscriber reconnects with backoff and subscribes
again. Events published while a replica was disconnected are not delivered to it by pub/sub: once
subscribed again, it reads the newest entries of the stream and delivers the ticks newer than the
last it delivered per ticker, and the gaps reaching past them (a catch-up). Away longer than the
stream keeps entries, it cannot: its streams get a gap for what was trimmed (the store has it).
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from cryptomarket.deribit.backoff import Backoff
from cryptomarket.distributed.connect import cancel_for_sure, raise_if_cancelled
from cryptomarket.distributed.stream_bounds import StreamBounds, parse_id
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.streaming.bus import Event, UpstreamStatus
from cryptomarket.streaming.redis_codec import (
    EVENTS_CHANNEL,
    LATEST_PREFIX,
    TICKS_STREAM,
    UPSTREAM_STATUS_KEY,
    latest_key,
    pack,
    unpack,
)

__all__ = [
    "EVENTS_CHANNEL",
    "LATEST_PREFIX",
    "TICKS_STREAM",
    "UPSTREAM_STATUS_KEY",
    "RedisBus",
    "latest_key",
    "pack",
    "read_latest",
    "read_upstream_status",
    "unpack",
]

logger = logging.getLogger("cryptomarket.streaming.redis")

BACKLOG = 10_000  # events kept while Redis is away; older ones are dropped first (as gaps)
PUBLISH_BATCH = 200  # events per round trip
CATCH_UP_PAGE = 2_000  # stream entries a reconnected subscriber reads per round trip...
CATCH_UP_MARGIN_MS = 30_000  # ...from this long before it lost the subscription (clock skew)
LATEST_TTL_SECONDS = 24 * 3600
STATUS_REFRESH = 5.0  # seconds between rewrites of the upstream status by the leader
STATUS_TTL_SECONDS = 30  # gone when no leader has rewritten it for this long
BOUNDS_EVERY_ENTRIES = 500  # stream entries between two checks of its bounds...
BOUNDS_EVERY_SECONDS = 1.0  # ...and at least this often
OVERFLOW_REASON = "dropped from the publish backlog while Redis was unreachable"
CUT_OFF_REASON = (
    "not delivered: this server was cut off from Redis longer than its tick stream keeps ticks "
    "(the price history has them)"
)

Received = Callable[[Event, bytes | None], None]


class RedisBus:
    def __init__(
        self,
        redis: Redis,
        *,
        backoff: Callable[[], Backoff] = Backoff,
        may_publish: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self._backoff = backoff
        self._may_publish = may_publish  # False: hold everything (an ingest not leading)
        self._clock = clock  # the stream's entry ids: what trimming by age goes by
        self._listeners: list[Received] = []
        self._backlog: deque[tuple[Event, bytes]] = deque()
        self._in_flight = 0  # events at the backlog's head being published now
        self._overflowed: dict[str, list[int]] = {}  # ticker -> [from, to] dropped, unreported
        self._published_newest: dict[str, int] = {}  # ticker -> newest timestamp published
        self._delivered_newest: dict[str, int] = {}  # ticker -> newest timestamp delivered
        self._delivered_status: UpstreamStatus | None = None
        self._gap_reached: dict[str, int] = {}  # ticker -> newest gap end delivered
        self._caught_up: set[tuple[bool, str, int, int]] = set()  # what the catch-up sent
        self._status_message: bytes | None = None  # the newest status published, to rewrite
        self._top_ms: int | None = None  # the stream's newest id's ms, once known
        self._since_bounds = 0  # stream entries added since the last check of its bounds
        self._next_bounds = 0.0  # monotonic time of the next check, at the latest
        self._next_status = 0.0  # of the next rewrite of the upstream status
        self._pending = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.bounds = StreamBounds(redis, clock)
        self.connected = False  # the subscriber holds a live subscription
        self.dropped = 0  # events dropped from a full backlog (ticks reported as gaps)
        self.failures = 0  # publish round trips Redis refused or did not answer

    @property
    def backlog(self) -> int:
        """Events waiting to be published."""
        return len(self._backlog)

    def subscribe(self, listener: Received) -> Callable[[], None]:
        """Receive every event published by any process, with its frame when it has one."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: Event) -> None:
        """Queue an event for every replica; never blocks (the ingest loop calls this)."""
        if len(self._backlog) >= BACKLOG and len(self._backlog) > self._in_flight:
            oldest, _ = self._backlog[self._in_flight]
            del self._backlog[self._in_flight]
            self._overflow(oldest)
        self._backlog.append((event, pack(event)))
        self._pending.set()

    def _overflow(self, event: Event) -> None:
        """Remember what a full backlog dropped, to publish it as a gap once Redis is back."""
        self.dropped += 1
        if isinstance(event, Tick):
            low, high = event.timestamp, event.timestamp
        elif isinstance(event, Gap):
            low, high = event.from_ts, event.to_ts
        else:
            return  # a status: the next one (or the rewrite) supersedes it
        span = self._overflowed.setdefault(event.ticker, [low, high])
        span[0], span[1] = min(span[0], low), max(span[1], high)

    def drop_backlog(self) -> int:
        """Forget what waits to be published (an ingest that lost its leadership); how many."""
        count = len(self._backlog) - self._in_flight
        while len(self._backlog) > self._in_flight:
            self._backlog.pop()
        self._overflowed.clear()
        return count

    def start(self, *, publishing: bool = True, receiving: bool = True) -> None:
        if publishing:
            self._tasks.append(asyncio.create_task(self._publish_loop(), name="redis-publish"))
            self._tasks.append(asyncio.create_task(self._wake_up_loop(), name="redis-wake-up"))
        if receiving:
            self._tasks.append(asyncio.create_task(self._receive_loop(), name="redis-receive"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_for_sure(tasks)

    async def _publish_loop(self) -> None:
        backoff = self._backoff()
        while True:
            await self._pending.wait()  # an event, or the housekeeping clock's wake-up
            self._pending.clear()
            while self._may_publish():
                self._report_overflow()
                if not self._backlog:
                    break
                try:
                    self._since_bounds += await self._publish_batch()
                except (RedisError, OSError) as error:
                    raise_if_cancelled()
                    self.failures += 1
                    self._top_ms = None  # learn it again: the stream may be new, or ahead
                    logger.warning(
                        "publishing to Redis failed, holding %d: %s", len(self._backlog), error
                    )
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                await self._housekeeping()
            if self._may_publish():
                await self._housekeeping()

    async def _wake_up_loop(self) -> None:
        """Wake the publisher now and then, so its housekeeping runs when no event comes.
        (Not a timeout around the wait: in Python 3.11 one that fires as the task is cancelled
        can swallow the cancellation.)"""
        while True:
            await asyncio.sleep(BOUNDS_EVERY_SECONDS)
            self._pending.set()

    async def _housekeeping(self) -> None:
        """Keep the stream in bounds and the upstream status fresh, when due."""
        now = time.monotonic()
        if self._since_bounds >= BOUNDS_EVERY_ENTRIES or now >= self._next_bounds:
            self._since_bounds, self._next_bounds = 0, now + BOUNDS_EVERY_SECONDS
            await self._keep_bounds()
        if self._status_message is not None and now >= self._next_status:
            self._next_status = now + STATUS_REFRESH
            try:
                await self.redis.set(
                    UPSTREAM_STATUS_KEY, self._status_message, ex=STATUS_TTL_SECONDS
                )
            except (RedisError, OSError) as error:
                raise_if_cancelled()
                logger.warning("could not rewrite the upstream status: %s", error)

    def _report_overflow(self) -> None:
        """Ticks a full backlog dropped go out first, as gaps, older than what it still holds."""
        if not self._overflowed or self._in_flight:
            return
        lost, self._overflowed = self._overflowed, {}
        for ticker, (low, high) in sorted(lost.items(), reverse=True):
            gap = Gap(ticker, low, high, OVERFLOW_REASON)
            self._backlog.appendleft((gap, pack(gap)))
        logger.warning("the publish backlog overflowed: published %d gap(s)", len(lost))

    async def _publish_batch(self) -> int:
        """Publish the backlog's head in one round trip; how many stream entries it added."""
        batch = [self._backlog[i] for i in range(min(PUBLISH_BATCH, len(self._backlog)))]
        if self._top_ms is None:
            self._top_ms = await self._stream_top_ms()
        entry_ms = max(int(self._clock() * 1000), self._top_ms)
        newest = dict(self._published_newest)
        added = 0
        self._in_flight = len(batch)
        try:
            # One transaction: a connection lost midway publishes all of it or none of it, so a
            # retry does not send part of it twice.
            async with self.redis.pipeline(transaction=True) as pipe:
                for event, message in batch:
                    if isinstance(event, Tick | Gap):
                        pipe.xadd(TICKS_STREAM, {"event": message}, id=f"{entry_ms}-*")
                        added += 1
                    if isinstance(event, Tick) and event.timestamp > newest.get(event.ticker, 0):
                        newest[event.ticker] = event.timestamp
                        pipe.set(latest_key(event.ticker), message, ex=LATEST_TTL_SECONDS)
                    if isinstance(event, UpstreamStatus):
                        pipe.set(UPSTREAM_STATUS_KEY, message, ex=STATUS_TTL_SECONDS)
                        self._status_message = message
                        self._next_status = time.monotonic() + STATUS_REFRESH
                    pipe.publish(EVENTS_CHANNEL, message)
                await pipe.execute()
        finally:
            self._in_flight = 0
        self._top_ms = entry_ms
        self._published_newest = newest
        for item in batch:
            if self._backlog and self._backlog[0] is item:
                self._backlog.popleft()
        return added

    async def _stream_top_ms(self) -> int:
        """The ms of the stream's newest id: new entries never go before it."""
        try:
            info = await self.redis.xinfo_stream(TICKS_STREAM)
        except ResponseError:  # no stream yet
            return 0
        return parse_id(info.get("last-generated-id") or b"0-0")[0]

    async def _keep_bounds(self) -> None:
        try:
            await self.bounds.enforce()
        except (RedisError, OSError) as error:
            raise_if_cancelled()
            logger.warning("could not keep the tick stream in bounds: %s", error)
        self._top_ms = None  # gaps it recorded went to the end of the stream

    async def _receive_loop(self) -> None:
        backoff = self._backoff()
        lost_at_ms = 0  # our clock when the subscription was last lost
        behind = False  # a catch-up from lost_at_ms is owed (until one has run to its end)
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                await self._read_status()  # before `connected`: a stream opened then has it
                self.connected = True
                backoff.reset()
                logger.info("receiving market events from Redis")
                if behind:
                    await self._catch_up(since_ms=lost_at_ms - CATCH_UP_MARGIN_MS)
                    behind = False
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    raise_if_cancelled()  # its own timeout may have eaten a cancellation
                    if message is not None and message["type"] == "message":
                        self._deliver(message["data"])
            except (RedisError, OSError) as error:
                raise_if_cancelled()
                if self.connected:
                    logger.warning("lost the Redis subscription, reconnecting: %s", error)
                    if not behind:  # a catch-up cut short starts again from the first loss
                        lost_at_ms = int(self._clock() * 1000)
                        behind = True
                self.connected = False
                await asyncio.sleep(backoff.next_delay())
            finally:
                self.connected = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _catch_up(self, *, since_ms: int) -> None:
        """After a lost subscription: the stream's ticks newer than the last delivered, and the
        gaps reaching past them, in order (a gap missed here is a loss no stream would hear of).
        Read in pages from a while before the subscription was lost (the stream is bounded)."""
        self._caught_up.clear()  # (bounded: what one catch-up delivered)
        caught = 0
        start = f"{max(since_ms, 0)}-0"
        # Entries from where the catch-up starts were trimmed: each ticker delivered here is
        # owed a gap from its newest delivered tick to its first one still in the stream.
        trimmed_to = await self._trimmed_to(since_ms)
        owed = dict(self._delivered_newest) if trimmed_to is not None else {}
        while True:
            entries = await self.redis.xrange(TICKS_STREAM, min=start, count=CATCH_UP_PAGE)
            for entry_id, fields in entries or []:
                data = (fields or {}).get(b"event")
                start = f"({entry_id.decode() if isinstance(entry_id, bytes) else entry_id}"
                if not isinstance(data, bytes):
                    continue
                try:
                    event, _ = unpack(data)
                except (ValueError, KeyError, TypeError):
                    continue
                if isinstance(event, Tick) and event.ticker in owed:
                    self._deliver_cut_off(event.ticker, owed.pop(event.ticker), event.timestamp - 1)
                if isinstance(event, Tick | Gap) and self._missed(event):
                    self._deliver(data, caught_up=True)
                    caught += 1
            if len(entries or []) < CATCH_UP_PAGE:
                break
        for ticker, newest in owed.items():  # none of its ticks left in the stream
            self._deliver_cut_off(ticker, newest, trimmed_to or 0)
        if caught:
            logger.info("caught up on %d event(s) from the Redis stream", caught)

    async def _trimmed_to(self, since_ms: int) -> int | None:
        """About the ms of the newest entry trimmed from the stream, when entries from
        `since_ms` on were (its first entry is later, or it is empty); else None."""
        try:
            info = await self.redis.xinfo_stream(TICKS_STREAM)
        except ResponseError:  # no stream: Redis lost it, and with it nothing this replica had
            return None
        added = info.get("entries-added")  # Redis 7: a stream Redis restarted without is new
        if added is not None and int(added) <= int(info.get("length", 0)):
            return None  # nothing ever removed
        first = info.get("first-entry")
        newest_gone = parse_id(first[0])[0] - 1 if first else None
        if newest_gone is None:  # all of it removed
            newest_gone = parse_id(info.get("last-generated-id") or b"0-0")[0]
        return newest_gone if newest_gone >= since_ms else None

    def _deliver_cut_off(self, ticker: str, newest: int, to_ms: int) -> None:
        """A gap for this replica's streams only: the ticks are stored, not lost."""
        if to_ms > newest:
            self._deliver(pack(Gap(ticker, newest + 1, to_ms, CUT_OFF_REASON)))

    def _missed(self, event: Tick | Gap) -> bool:
        """Whether a stream entry is newer than what this replica delivered: a tick newer than
        its ticker's newest delivered tick, a gap reaching past that and past the gaps delivered."""
        newest = self._delivered_newest.get(event.ticker, 0)
        if isinstance(event, Tick):
            return event.timestamp > newest
        return event.to_ts > max(newest, self._gap_reached.get(event.ticker, 0))

    async def _read_status(self) -> None:
        """The upstream status as the leader last wrote it: a replica that starts (or comes
        back) after the last change learns it now, not at the next change."""
        data = await self.redis.get(UPSTREAM_STATUS_KEY)
        if isinstance(data, bytes):
            self._deliver(data)

    def _deliver(self, data: bytes, *, caught_up: bool = False) -> None:
        try:
            event, frame = unpack(data)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed event from Redis")
            return
        if isinstance(event, UpstreamStatus):
            known = self._delivered_status
            if known is not None and (event == known or _aware(event.at) < _aware(known.at)):
                return  # read from the key and received on the channel: once, newest wins
            self._delivered_status = event
        else:
            key = _key(event)
            if caught_up:
                self._caught_up.add(key)
            elif key in self._caught_up:
                self._caught_up.discard(key)
                return  # the catch-up read it from the stream; pub/sub brings it again
            reached = self._delivered_newest if isinstance(event, Tick) else self._gap_reached
            reached[event.ticker] = max(reached.get(event.ticker, 0), key[3])
        for listener in tuple(self._listeners):
            try:
                listener(event, frame)
            except Exception:
                logger.exception("a Redis bus listener failed")


def _key(event: Tick | Gap) -> tuple[bool, str, int, int]:
    """What tells a delivered tick or gap from another: kind, ticker, first and last ms."""
    if isinstance(event, Tick):
        return False, event.ticker, event.timestamp, event.timestamp
    return True, event.ticker, event.from_ts, event.to_ts


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def read_upstream_status(redis: Redis) -> UpstreamStatus | None:
    """The upstream status the ingest leader keeps in Redis; None when no leader has written
    it for STATUS_TTL_SECONDS (no ingest leads) or Redis lost it."""
    data = await redis.get(UPSTREAM_STATUS_KEY)
    if not isinstance(data, bytes):
        return None
    try:
        event, _ = unpack(data)
    except (ValueError, KeyError, TypeError):
        return None
    return event if isinstance(event, UpstreamStatus) else None


async def read_latest(redis: Redis, tickers: list[str]) -> dict[str, Tick]:
    """The newest published tick of each ticker that has one in Redis."""
    if not tickers:
        return {}
    values = await redis.mget([latest_key(ticker) for ticker in tickers])
    found: dict[str, Tick] = {}
    for value in values:
        if not isinstance(value, bytes):
            continue
        try:
            tick, _ = unpack(value)
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(tick, Tick):
            found[tick.ticker] = tick
    return found
