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
published as a gap once Redis is back), and the receiver (streaming/redis_receiver.py) reconnects
with backoff, subscribes again and catches up from the stream on what it missed.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

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
    read_message,
    unpack,
)
from cryptomarket.streaming.redis_receiver import CUT_OFF_REASON, Received, RedisReceiver

__all__ = [
    "CUT_OFF_REASON",
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
LATEST_TTL_SECONDS = 24 * 3600
STATUS_REFRESH = 5.0  # seconds between rewrites of the upstream status by the leader
STATUS_TTL_SECONDS = 30  # gone when no leader has rewritten it for this long
BOUNDS_EVERY_ENTRIES = 500  # stream entries between two checks of its bounds...
BOUNDS_EVERY_SECONDS = 1.0  # ...and at least this often
OVERFLOW_REASON = "dropped from the publish backlog while Redis was unreachable"


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
        self._backlog: deque[tuple[Event, bytes]] = deque()
        self._in_flight = 0  # events at the backlog's head being published now
        self._overflowed: dict[str, list[int]] = {}  # ticker -> [from, to] dropped, unreported
        self._published_newest: dict[str, int] = {}  # ticker -> newest timestamp published
        self._status_message: bytes | None = None  # the newest status published, to rewrite
        self._top_ms: int | None = None  # the stream's newest id's ms, once known
        self._since_bounds = 0  # stream entries added since the last check of its bounds
        self._next_bounds = 0.0  # monotonic time of the next check, at the latest
        self._next_status = 0.0  # of the next rewrite of the upstream status
        self._pending = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.bounds = StreamBounds(redis, clock)
        self.receiver = RedisReceiver(redis, backoff=backoff, clock=clock)
        self.dropped = 0  # events dropped from a full backlog (ticks reported as gaps)
        self.failures = 0  # publish round trips Redis refused or did not answer

    @property
    def backlog(self) -> int:
        """Events waiting to be published."""
        return len(self._backlog)

    @property
    def connected(self) -> bool:
        """The receiver holds a live subscription."""
        return self.receiver.connected

    def subscribe(self, listener: Received) -> Callable[[], None]:
        """Receive every event published by any process, with its frame when it has one."""
        return self.receiver.subscribe(listener)

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
            self._tasks.append(asyncio.create_task(self.receiver.run(), name="redis-receive"))

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


async def read_upstream_status(redis: Redis) -> UpstreamStatus | None:
    """The upstream status the ingest leader keeps in Redis; None when no leader has written
    it for STATUS_TTL_SECONDS (no ingest leads) or Redis lost it."""
    read = read_message(await redis.get(UPSTREAM_STATUS_KEY))
    return read[0] if read is not None and isinstance(read[0], UpstreamStatus) else None


async def read_latest(redis: Redis, tickers: list[str]) -> dict[str, Tick]:
    """The newest published tick of each ticker that has one in Redis."""
    if not tickers:
        return {}
    values = await redis.mget([latest_key(ticker) for ticker in tickers])
    found: dict[str, Tick] = {}
    for value in values:
        if (read := read_message(value)) is not None and isinstance(tick := read[0], Tick):
            found[tick.ticker] = tick
    return found
