"""The receiving half of the Redis bus (streaming/redis_bus.py): every event published by any
process, handed to this process's listeners once each, in order.

Events published while the subscription was lost are not delivered by pub/sub: once subscribed
again, the receiver reads the newest entries of the tick stream and delivers the ticks newer than
the last it delivered per ticker, and the gaps reaching past them (a catch-up). Away longer than
the stream keeps entries, it cannot: the listeners get a gap for what was trimmed (the store has
those ticks).
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from cryptomarket.deribit.backoff import Backoff
from cryptomarket.distributed.connect import raise_if_cancelled
from cryptomarket.distributed.stream_bounds import parse_id
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.streaming.bus import Event, UpstreamStatus
from cryptomarket.streaming.redis_codec import (
    EVENTS_CHANNEL,
    TICKS_STREAM,
    UPSTREAM_STATUS_KEY,
    read_message,
)

logger = logging.getLogger("cryptomarket.streaming.redis")

CATCH_UP_PAGE = 2_000  # stream entries a reconnected subscriber reads per round trip...
CATCH_UP_MARGIN_MS = 30_000  # ...from this long before it lost the subscription (clock skew)
CUT_OFF_REASON = (
    "not delivered: this server was cut off from Redis longer than its tick stream keeps ticks "
    "(the price history has them)"
)

Received = Callable[[Event, bytes | None], None]


class RedisReceiver:
    def __init__(
        self,
        redis: Redis,
        *,
        backoff: Callable[[], Backoff] = Backoff,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self._backoff = backoff
        self._clock = clock  # the stream's entry ids are the publisher's clock in ms
        self._listeners: list[Received] = []
        self._delivered_newest: dict[str, int] = {}  # ticker -> newest timestamp delivered
        self._delivered_status: UpstreamStatus | None = None
        self._gap_reached: dict[str, int] = {}  # ticker -> newest gap end delivered
        self._caught_up: set[tuple[bool, str, int, int]] = set()  # what the catch-up sent
        self.connected = False  # holds a live subscription

    def subscribe(self, listener: Received) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def run(self) -> None:
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
                start = f"({entry_id.decode() if isinstance(entry_id, bytes) else entry_id}"
                if (read := read_message((fields or {}).get(b"event"))) is None:
                    continue
                event, frame = read
                if isinstance(event, Tick) and event.ticker in owed:
                    self._deliver_cut_off(event.ticker, owed.pop(event.ticker), event.timestamp - 1)
                if isinstance(event, Tick | Gap) and self._missed(event):
                    self._hand_out(event, frame, caught_up=True)
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
            self._hand_out(Gap(ticker, newest + 1, to_ms, CUT_OFF_REASON), None)

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

    def _deliver(self, data: bytes) -> None:
        if (read := read_message(data)) is None:
            logger.warning("ignored a malformed event from Redis")
            return
        self._hand_out(*read)

    def _hand_out(self, event: Event, frame: bytes | None, *, caught_up: bool = False) -> None:
        """To the listeners, once: a tick or gap the catch-up read is not handed out again
        when pub/sub brings it too."""
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
