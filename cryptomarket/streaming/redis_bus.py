"""The market-event bus across processes, on Redis (distributed mode).

The ingest leader publishes every event once on a pub/sub channel; each API replica receives it and
hands it to its own stream hub. A tick travels as a one-line JSON header followed by its SSE frame,
encoded once by the publisher: replicas pass those very bytes on to their clients. Ticks also go to
a capped Redis stream, from which `Last-Event-ID` replays and the persist job reads.

Redis may restart under us: publishing buffers a bounded backlog meanwhile, and the subscriber
reconnects with backoff and subscribes again. Events published while a replica was disconnected
are not delivered to it by pub/sub; the replica's clients catch up through replay.
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
    def __init__(self, redis: Redis, *, backoff: Callable[[], Backoff] = Backoff) -> None:
        self.redis = redis
        self._backoff = backoff
        self._listeners: list[Received] = []
        self._backlog: deque[tuple[bool, bytes]] = deque(maxlen=BACKLOG)  # (is a tick, message)
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
        self._backlog.append((isinstance(event, Tick), pack(event)))
        self._pending.set()

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
            while self._backlog:
                head = self._backlog[0]
                is_tick, message = head
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        pipe.publish(EVENTS_CHANNEL, message)
                        if is_tick:
                            pipe.xadd(
                                TICKS_STREAM,
                                {"event": message},
                                maxlen=TICKS_STREAM_LENGTH,
                                approximate=True,
                            )
                        await pipe.execute()
                except (RedisError, OSError) as error:
                    logger.warning(
                        "publishing to Redis failed, holding %d: %s", len(self._backlog), error
                    )
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                if self._backlog and self._backlog[0] is head:
                    self._backlog.popleft()

    async def _receive_loop(self) -> None:
        backoff = self._backoff()
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS_CHANNEL)
                self.connected = True
                backoff.reset()
                logger.info("receiving market events from Redis")
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

    def _deliver(self, data: bytes) -> None:
        try:
            event, frame = unpack(data)
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed event from Redis")
            return
        for listener in tuple(self._listeners):
            try:
                listener(event, frame)
            except Exception:
                logger.exception("a Redis bus listener failed")
