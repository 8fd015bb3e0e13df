"""The stream hub: every open SSE stream of this process, and the fan-out of market events to them.

Each tick is encoded once into its SSE frame; the same bytes object is appended to the buffer of
every stream that takes it. Streams with `timer=0` take every tick as it arrives. Streams with a
timer take the latest price of the ticker every `timer` seconds from one scheduler for the whole
process (a heap of due times), never from a loop per client. A stream whose buffer fills up is
dropped; a closed stream's state is gone at once.
"""

import asyncio
import bisect
import itertools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime

from cryptomarket.instruments.frames import is_final, is_notice
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.streaming import events
from cryptomarket.streaming.bus import Event, UpstreamStatus
from cryptomarket.streaming.registry import OpenStreams
from cryptomarket.streaming.sessions import SIGNED_OUT, RecentlySignedOut, SessionRecheck
from cryptomarket.streaming.stream import Stream
from cryptomarket.streaming.timers import TimerSchedule

logger = logging.getLogger("cryptomarket.streaming")

DEFAULT_TIMER = 60
END_GRACE = 10.0  # seconds an ended stream's client has to read its end
PING_INTERVAL = 15.0  # an idle stream gets a `: ping` at least this often
PING_SWEEPS = 3  # idle streams are found by this many sweeps per interval, not a timer each
# Per ticker, in publish order: Last-Event-ID replay of what the store may not have yet.
RECENT_TICKS = 600
# Gaps published lately, for streams that open after them: a restarted server records its
# outage's gap as its clients come back, and their first price is older than the gap's end.
RECENT_GAPS = 1_000
# An instrument no stream here watches and none came of for this long (cancelled, not expired:
# expired ones go at once) loses its latest price and replay ring, which the store and the
# Redis stream still hold: else they would stay for every instrument ever watched.
FORGET_QUIET_MS = 15 * 60 * 1000
FORGET_EVERY = 60.0  # seconds between two looks for such instruments
EXPIRED_KEPT = 2_000  # expired instruments remembered (Deribit lists a few hundred a day)


class StreamHub:
    def __init__(
        self,
        *,
        max_streams: int,
        max_per_user: int,
        max_per_account: int | None = None,
        client_buffer: int = 2_000,
    ) -> None:
        self.registered = OpenStreams(
            max_streams=max_streams, max_per_user=max_per_user, max_per_account=max_per_account
        )
        self.client_buffer = client_buffer
        self._ping_interval = PING_INTERVAL
        self.latest: dict[str, tuple[Tick, bytes]] = {}
        self.recent_gaps: deque[Gap] = deque(maxlen=RECENT_GAPS)
        self.recent: dict[str, deque[Tick]] = {}  # ticker -> its newest ticks, as published
        self.recent_size = RECENT_TICKS
        self.upstream = events.status_frame("connecting", _now())
        self.upstream_state = "connecting"
        self._every_tick: dict[str, set[Stream]] = {}  # ticker -> streams with timer 0
        self.timers = TimerSchedule()  # of the streams with a timer
        self._ids = itertools.count(1)
        self._scheduler: asyncio.Task[None] | None = None
        self.streams_dropped = 0  # too slow to keep, since start
        self.closing = False  # shutting down: no stream stays open
        # Open streams' sessions and keys, re-checked against the store (streaming/sessions.py).
        self.sessions = SessionRecheck(self._streams, self.end_stream, self.timers.changed.set)
        self.signed_out = RecentlySignedOut()  # refused at registration (streaming/sessions.py)
        self.events_sent = 0  # frames handed to streams, since start
        # The newest instruments that expired, with their final price (None: found gone): a
        # stream subscribing to one after (opening, or its store not cleared yet) is told so.
        self.expired: OrderedDict[str, tuple[Tick, bytes | None]] = OrderedDict()
        # Told the name of each instrument whose final frame went out (its catalogue forgets it).
        self.on_expired: Callable[[str], None] | None = None

    @property
    def ping_interval(self) -> float:
        return self._ping_interval

    @ping_interval.setter
    def ping_interval(self, seconds: float) -> None:
        self._ping_interval = seconds
        self.timers.changed.set()  # the scheduler re-plans its next sweep

    @property
    def open_streams(self) -> int:
        return self.registered.count

    def user_ids(self) -> list[str]:
        """The users with an open stream here."""
        return self.registered.users()

    def streams_of(self, user_id: str) -> frozenset[Stream]:
        return self.registered.of(user_id)

    def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = asyncio.create_task(self._run_timers(), name="stream-timers")

    def close_all(self) -> None:
        """End every stream: each sends what it has buffered and finishes its response."""
        for stream in self._streams():
            stream.close()

    def shut_down(self) -> None:
        """The server is going down: every stream ends, and so does one registered from now on
        (its request was under way) as soon as its opening is sent; its client comes back after
        `retry`, to the next server."""
        self.closing = True
        self.close_all()

    async def stop(self) -> None:
        self.shut_down()
        await self.sessions.stop()
        if self._scheduler is not None:
            self._scheduler.cancel()
            await asyncio.gather(self._scheduler, return_exceptions=True)
            self._scheduler = None

    # -- streams ----------------------------------------------------------------------------

    def open(
        self,
        user_id: str,
        default_timer: int | None,
        token: str | None = None,
        key_id: str | None = None,
        account_id: int | None = None,
        *,
        settle_later: bool = False,
    ) -> Stream:
        """Register a new stream, within the per-user, per-account and per-process bounds;
        `token` is the session it was opened with (else `key_id`, the client id of its key
        headers), so signing out, or a new key, can end it; `account_id` is the Deribit account
        owning `user_id` (one account may claim several user ids). `settle_later`: its stored
        subscriptions are yet to be read; changes made meanwhile wait for `settle`."""
        # Nothing is stored until every bound passed: a refused open leaves no entry behind.
        self.registered.admit(user_id, account_id)
        stream = Stream(
            id=f"s{next(self._ids)}",
            user_id=user_id,
            default_timer=DEFAULT_TIMER if default_timer is None else default_timer,
            max_buffered=self.client_buffer,
            on_drop=self._drop,
            token=token,
            key_id=key_id,
            account_id=account_id,
        )
        if settle_later:
            stream.opening_changes = {}
        if self.closing:
            stream.close()
        self.registered.add(stream)
        return stream

    def end_session(self, token: str) -> int:
        """The session `token` was signed out: end the streams opened with it on this process
        (each writes what it has buffered and finishes its response). How many were open."""
        ended = [stream for stream in self._streams() if stream.token == token]
        for stream in ended:
            self.end_stream(stream, SIGNED_OUT)
        return len(ended)

    def end_stream(self, stream: Stream, reason: str) -> None:
        """End a stream whose session ended: a `session_ended` event says why, then its end. A
        client that stopped reading would hold its writer (and its slot) for good: cut after
        END_GRACE seconds (no push can drop a closed stream)."""
        stream.push(events.session_ended_frame(reason))
        stream.close()
        asyncio.get_running_loop().call_later(END_GRACE, self._cut_if_still_writing, stream)

    def _cut_if_still_writing(self, stream: Stream) -> None:
        if stream in self.registered:
            logger.warning("stream %s of %s cut: its end was not read", stream.id, stream.user_id)
            self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        """A stream too far behind: its state goes now, and its response is aborted (the
        writer is stuck waiting for a client that does not read, so it cannot end by itself)."""
        self.close(stream)
        if stream.writer is not None and stream.writer is not asyncio.current_task():
            stream.writer.cancel()

    def close(self, stream: Stream) -> None:
        """Forget a stream at once (its timer entries are skipped when they come due)."""
        stream.close()
        if self.registered.remove(stream) and stream.dropped:
            self.streams_dropped += 1
        for ticker in list(stream.timers):
            self._leave(stream, ticker)
        stream.forget()  # its timer entries, now stale, hold an empty shell until compacted
        self.timers.forget_closed()

    def streams_per_account(self) -> dict[int, int]:
        """Open streams here per Deribit account, for the accounts holding any."""
        return self.registered.per_account()

    def subscribe(self, stream: Stream, ticker: str, timer: int | None) -> None:
        """(Re)subscribe a stream to a ticker; the latest price goes out at once."""
        effective = stream.default_timer if timer is None else timer
        if stream.opening_changes is not None:
            stream.opening_changes[ticker] = effective  # applied by settle
            return
        if (final := self.expired.get(ticker)) is not None:
            self._tell_expired(stream, *final)  # e.g. it expired while the stream opened
            return
        if stream.timers.get(ticker) == effective:
            return
        self._leave(stream, ticker)
        stream.timers[ticker] = effective
        if effective == 0:
            self._every_tick.setdefault(ticker, set()).add(stream)
        else:
            now = asyncio.get_running_loop().time()
            self.timers.start(stream, ticker, effective, now)
        if (latest := self.latest.get(ticker)) is not None:
            tick, frame = latest
            if stream.push_price(tick, self._in_publish_order(stream, tick, frame)):
                self.events_sent += 1

    def _in_publish_order(self, stream: Stream, tick: Tick, frame: bytes) -> bytes:
        """The latest price as a subscribe sends it: without its id if the stream already had a
        price published after it. A resume from that id would replay what the client has (a
        replay is by publish order), while an event without one leaves the client's last id."""
        for ticker, timestamp in stream.last_sent.items():
            sent = self.publish_stamp(ticker, timestamp)
            if sent is not None and sent > tick.received_at:
                return frame.replace(f"id: {events.event_id(tick)}\n".encode(), b"", 1)
        return frame

    def publish_stamp(self, ticker: str, timestamp: int) -> datetime | None:
        """The publish stamp of one of the recent ticks (a ticker's come in timestamp order)."""
        recent = self.recent.get(ticker, ())
        at = bisect.bisect_left(recent, timestamp, key=_timestamp)
        if at < len(recent) and recent[at].timestamp == timestamp:
            return recent[at].received_at
        return None

    def unsubscribe(self, stream: Stream, ticker: str) -> None:
        if stream.opening_changes is not None:
            stream.opening_changes[ticker] = None  # applied by settle
            return
        self._leave(stream, ticker)
        stream.timers.pop(ticker, None)

    def _leave(self, stream: Stream, ticker: str) -> None:
        """Stop a stream's current delivery of a ticker (its timer entry turns stale)."""
        self._stop_every_tick(stream, ticker)
        self.timers.stop(stream, ticker)

    def settle(self, stream: Stream, stored: dict[str, int | None]) -> dict[str, int]:
        """End a stream's opening: the timer of each of its subscriptions, those stored (as read
        while it opened), each change made meanwhile winning. The caller subscribes the stream
        to each, after its replay: until then no live tick of any reached it."""
        changes = stream.opening_changes or {}
        stream.opening_changes = None
        timers = {
            ticker: stream.default_timer if timer is None else timer
            for ticker, timer in stored.items()
        }
        for ticker, timer in changes.items():
            if timer is None:
                timers.pop(ticker, None)
            else:
                timers[ticker] = timer
        return timers

    def remember_latest(self, tick: Tick) -> None:
        """Keep a price as the latest if it is newer than what the hub has (e.g. from the store)."""
        current = self.latest.get(tick.ticker)
        if current is None or tick.timestamp > current[0].timestamp:
            self.latest[tick.ticker] = (tick, events.price_frame(tick))

    # -- market events ----------------------------------------------------------------------

    def publish(self, event: Event, frame: bytes | None = None) -> None:
        """The bus listener: encode once (or take the frame the publisher encoded), and hand the
        same bytes to every stream that takes them."""
        if isinstance(event, Tick):
            self._publish_tick(event, frame)
        elif isinstance(event, Gap):
            frame = events.gap_frame(event)
            self.recent_gaps.append(event)
            for stream in self._streams():
                if event.ticker in stream.timers and stream.push(frame):
                    self.events_sent += 1
        elif isinstance(event, UpstreamStatus):
            self.upstream_state = event.state
            self.upstream = events.status_frame(event.state, event.at)
            for stream in self._streams():
                if stream.push(self.upstream):
                    self.events_sent += 1

    def _publish_tick(self, tick: Tick, frame: bytes | None) -> None:
        if is_notice(tick):
            self._expire(tick, None)  # the ingest found it gone: no price to show
            return
        recent = self.recent.get(tick.ticker)
        if recent and tick.timestamp <= recent[-1].timestamp:
            return  # had live already (each bus may deliver a tick twice around a reconnect)
        # Judged against the newest tick that went out live, not the latest price: that may
        # have been read from the cache or the store ahead of this very tick (remember_latest).
        current = self.latest.get(tick.ticker)
        frame = frame or events.price_frame(tick)
        if current is None or tick.timestamp > current[0].timestamp:
            self.latest[tick.ticker] = (tick, frame)
        if recent is None:
            recent = self.recent[tick.ticker] = deque(maxlen=self.recent_size)
        recent.append(tick)
        sent = 0
        for stream in tuple(self._every_tick.get(tick.ticker, ())):
            sent += stream.push_price(tick, frame)
        if current is None:  # the first price of a new ticker: "at once" for everyone on it
            for stream in self._streams():
                if tick.ticker in stream.timers:
                    sent += stream.push_price(tick, frame)
        self.events_sent += sent
        if tick.fields is not None and is_final(tick):
            self._expire(tick, frame)

    def _expire(self, tick: Tick, frame: bytes | None) -> None:
        """An instrument's final frame: every stream on it gets that price (whatever its timer),
        then the `expired` event, and its subscription ends (the store's ends in the ingest)."""
        self.expired[tick.ticker] = (tick, frame)
        while len(self.expired) > EXPIRED_KEPT:
            self.expired.popitem(last=False)
        for stream in self._streams():
            if tick.ticker in stream.timers:
                self._tell_expired(stream, tick, frame)
        # Its recent ticks stay a while, for replays of streams that were away when it expired.
        self.latest.pop(tick.ticker, None)
        if self.on_expired is not None:
            self.on_expired(tick.ticker)

    def _tell_expired(self, stream: Stream, tick: Tick, frame: bytes | None) -> None:
        if frame is not None:
            self.events_sent += stream.push_price(tick, frame)
        self.events_sent += stream.push(events.expired_frame(tick))
        self.unsubscribe(stream, tick.ticker)

    def forget_quiet_instruments(self, now_ms: int) -> list[str]:
        """Drop what is kept of instruments unwatched here and quiet for FORGET_QUIET_MS."""
        watched = {ticker for stream in self._streams() for ticker in stream.timers}
        quiet = [
            ticker
            for ticker, (tick, _) in self.latest.items()
            if is_instrument(ticker)
            and ticker not in watched
            and now_ms - tick.timestamp > FORGET_QUIET_MS
        ]
        for ticker in quiet:
            del self.latest[ticker]
            self.recent.pop(ticker, None)
        for ticker in [t for t in self.recent if t in self.expired and t not in self.latest]:
            if now_ms - self.recent[ticker][-1].timestamp > FORGET_QUIET_MS:
                del self.recent[ticker]
        return quiet

    def _streams(self) -> list[Stream]:
        return self.registered.all()

    # -- timers -----------------------------------------------------------------------------

    def _stop_every_tick(self, stream: Stream, ticker: str) -> None:
        watchers = self._every_tick.get(ticker)
        if watchers is not None:
            watchers.discard(stream)
            if not watchers:
                del self._every_tick[ticker]

    async def _run_timers(self) -> None:
        loop = asyncio.get_running_loop()
        last_sweep = last_forget = loop.time()
        while True:
            self.timers.changed.clear()
            now = loop.time()
            try:
                self.timers.fire_due(now, self._send_latest)
            except Exception:  # one bad firing must not stop every timer stream of the process
                logger.exception("a stream timer failed")
            next_sweep = last_sweep + self._ping_interval / PING_SWEEPS
            if now >= next_sweep:
                self._ping_quiet_streams()
                last_sweep = now
                next_sweep = now + self._ping_interval / PING_SWEEPS
            if now >= last_forget + FORGET_EVERY:
                self.forget_quiet_instruments(int(time.time() * 1000))
                last_forget = now
            due = self.timers.next_due
            wake_at = next_sweep if due is None else min(due, next_sweep)
            if (session_check := self.sessions.due(now)) is not None:
                wake_at = min(wake_at, session_check)
            try:
                async with asyncio.timeout(max(wake_at - now, 0.0)):
                    await self.timers.changed.wait()
            except TimeoutError:
                pass

    def _send_latest(self, stream: Stream, ticker: str) -> None:
        if latest := self.latest.get(ticker):
            self.events_sent += stream.push_price(*latest)

    def _ping_quiet_streams(self) -> None:
        """A stream that got no frame for PING_SWEEPS - 1 sweeps gets a ping on this one, so no
        stream stays silent longer than the ping interval (proxies and clients see it alive)."""
        for stream in self._streams():
            if stream.quiet_sweeps >= PING_SWEEPS - 1:
                stream.push(events.PING)
            else:
                stream.quiet_sweeps += 1


def _now() -> datetime:
    return datetime.now(UTC)


def _timestamp(tick: Tick) -> int:
    return tick.timestamp
