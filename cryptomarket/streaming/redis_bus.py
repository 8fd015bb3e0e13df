"""The market-event bus across processes, on Redis (distributed mode).

The ingest leader publishes every event once on a pub/sub channel; each API replica receives it and
hands it to its own stream hub. A tick travels as a one-line JSON header followed by its SSE frame,
encoded once by the publisher: replicas pass those very bytes on to their clients. Ticks also go to
a capped Redis stream, from which `Last-Event-ID` replays and the persist job reads.

Gaps go to the stream too (the persist job records them), and the publisher keeps the newest
tick of each ticker under `latest_key(ticker)` for a day: a replica or a new ingest leader reads it
when it has not seen that ticker itself.

Redis may restart under us: publishing buffers a bounded backlog meanwhile, and the subscriber
reconnects with backoff and subscribes again. Events published while a replica was disconnected
are not delivered to it by pub/sub: once subscribed again, it reads the newest entries of the
stream and delivers the ticks newer than the last it delivered per ticker (a catch-up).
"""

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cryptomarket.deribit.backoff import Backoff
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.streaming import events
from cryptomarket.streaming.bus import Event, UpstreamStatus

logger = logging.getLogger("cryptomarket.streaming.redis")

EVENTS_CHANNEL = "cryptomarket:events"
TICKS_STREAM = "cryptomarket:ticks"
TICKS_STREAM_LENGTH = 200_000  # about a day of two tickers; trimmed approximately
BACKLOG = 10_000  # events kept while Redis is away; older ones are dropped first
CATCH_UP = 2_000  # stream entries a reconnected subscriber reads back
LATEST_PREFIX = "cryptomarket:latest:"
LATEST_TTL_SECONDS = 24 * 3600


def latest_key(ticker: str) -> str:
    return LATEST_PREFIX + ticker


Received = Callable[[Event, bytes | None], None]


def pack(event: Event) -> bytes:
    """Header line + SSE frame for a tick; the header alone for other events."""
    if isinstance(event, Tick):
        header = {
            "kind": "tick",
            "ticker": event.ticker,
            "price": event.price,
            "timestamp": event.timestamp,
        }
        return json.dumps(header).encode() + b"\n" + events.price_frame(event)
    if isinstance(event, Gap):
        header = {
            "kind": "gap",
            "ticker": event.ticker,
            "from": event.from_ts,
            "to": event.to_ts,
            "reason": event.reason,
        }
    else:
        header = {"kind": "status", "state": event.state, "at": event.at.isoformat()}
    return json.dumps(header).encode()


def unpack(message: bytes) -> tuple[Event, bytes | None]:
    """The event, and for a tick the SSE frame its publisher encoded."""
    head, _, frame = message.partition(b"\n")
    header: dict[str, Any] = json.loads(head)
    kind = header["kind"]
    if kind == "tick":
        tick = Tick(header["ticker"], float(header["price"]), int(header["timestamp"]))
        return tick, frame or None
    if kind == "gap":
        gap = Gap(header["ticker"], int(header["from"]), int(header["to"]), header["reason"])
        return gap, None
    return UpstreamStatus(header["state"], datetime.fromisoformat(header["at"])), None


class RedisBus:
    def __init__(
        self,
        redis: Redis,
        *,
        backoff: Callable[[], Backoff] = Backoff,
        may_publish: Callable[[], bool] = lambda: True,
    ) -> None:
        self.redis = redis
        self._backoff = backoff
        self._may_publish = may_publish  # False: hold everything (an ingest not leading)
        self._listeners: list[Received] = []
        self._backlog: deque[tuple[Event, bytes]] = deque(maxlen=BACKLOG)
        self._published_newest: dict[str, int] = {}  # ticker -> newest timestamp published
        self._delivered_newest: dict[str, int] = {}  # ticker -> newest timestamp delivered
        self._pending = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.connected = False  # the subscriber holds a live subscription
        self.dropped = 0

    def subscribe(self, listener: Received) -> Callable[[], None]:
        """Receive every event published by any process, with its frame when it has one."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def publish(self, event: Event) -> None:
        """Queue an event for every replica; never blocks (the ingest loop calls this)."""
        if len(self._backlog) == self._backlog.maxlen:
            self.dropped += 1
        self._backlog.append((event, pack(event)))
        self._pending.set()

    def drop_backlog(self) -> int:
        """Forget what waits to be published (an ingest that lost its leadership); how many."""
        count = len(self._backlog)
        self._backlog.clear()
        return count

    def start(self, *, publishing: bool = True, receiving: bool = True) -> None:
        if publishing:
            self._tasks.append(asyncio.create_task(self._publish_loop(), name="redis-publish"))
        if receiving:
            self._tasks.append(asyncio.create_task(self._receive_loop(), name="redis-receive"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _publish_loop(self) -> None:
        backoff = self._backoff()
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._backlog and self._may_publish():
                head = self._backlog[0]
                event, message = head
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.publish(EVENTS_CHANNEL, message)
                        if isinstance(event, Tick | Gap):
                            pipe.xadd(
                                TICKS_STREAM,
                                {"event": message},
                                maxlen=TICKS_STREAM_LENGTH,
                                approximate=True,
                            )
                        if isinstance(event, Tick) and event.timestamp > self._published_newest.get(
                            event.ticker, 0
                        ):
                            pipe.set(latest_key(event.ticker), message, ex=LATEST_TTL_SECONDS)
                        await pipe.execute()
                except (RedisError, OSError) as error:
                    logger.warning(
                        "publishing to Redis failed, holding %d: %s", len(self._backlog), error
                    )
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                if isinstance(event, Tick):
                    newest = self._published_newest.get(event.ticker, 0)
                    self._published_newest[event.ticker] = max(newest, event.timestamp)
                if self._backlog and self._backlog[0] is head:
                    self._backlog.popleft()

    async def _receive_loop(self) -> None:
        backoff = self._backoff()
        first = True
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                self.connected = True
                backoff.reset()
                logger.info("receiving market events from Redis")
                if not first:
                    await self._catch_up()
                first = False
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None and message["type"] == "message":
                        self._deliver(message["data"])
            except (RedisError, OSError) as error:
                if self.connected:
                    logger.warning("lost the Redis subscription, reconnecting: %s", error)
                self.connected = False
                await asyncio.sleep(backoff.next_delay())
            finally:
                self.connected = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _catch_up(self) -> None:
        """After a lost subscription: the stream's ticks newer than the last delivered, in order."""
        entries = await self.redis.xrevrange(TICKS_STREAM, count=CATCH_UP)
        caught = 0
        for _entry_id, fields in reversed(entries or []):
            data = (fields or {}).get(b"event")
            if not isinstance(data, bytes) or not data.startswith(b'{"kind": "tick"'):
                continue
            try:
                tick, _ = unpack(data)
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(tick, Tick) and tick.timestamp > self._delivered_newest.get(
                tick.ticker, 0
            ):
                self._deliver(data)
                caught += 1
        if caught:
            logger.info("caught up on %d tick(s) from the Redis stream", caught)

    def _deliver(self, data: bytes) -> None:
        try:
            event, frame = unpack(data)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed event from Redis")
            return
        if isinstance(event, Tick):
            newest = self._delivered_newest.get(event.ticker, 0)
            self._delivered_newest[event.ticker] = max(newest, event.timestamp)
        for listener in tuple(self._listeners):
            try:
                listener(event, frame)
            except Exception:
                logger.exception("a Redis bus listener failed")


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
