"""Last-Event-ID replay: the ticks a reconnecting client missed, in publish order, each once.

Every tick carries its publish stamp (`Tick.received_at`: strictly increasing in publish order,
and every hub receives ticks in that order; the price table stores it). Resuming from `X:T` means
the client had every tick published up to and including X:T, for all its tickers. It gets, for its
every-tick subscriptions, exactly the ticks published after X:T: from the store (after a restart,
or beyond the hub's recent ticks) and from the hub (what the store may not have yet), in publish
order. Per ticker at most REPLAY_LIMIT, the newest, and fewer when the stream has many every-tick
tickers (REPLAY_BUDGET in all, so one open's work is bounded); what is left out is a `gap` event.

X not one of the stream's every-tick tickers (its last price came from a timer, or X is no longer
subscribed): that frame went out some time after X:T was published, before X's next tick was. The
other tickers' ticks published in between may or may not have been sent: a `gap` event names them,
and the replay goes on from X's next tick (everything after X:T is uncertain while there is none).

X:T not found (neither in the hub nor in the store, e.g. pruned): the resumed ticker X goes on after
T, each other ticker after T + UNCERTAIN_MS, and those get a `gap` event for the span around T in
which the client may or may not have had their ticks. Rows stored before publish stamps existed
carry the moment they were written instead: close to publish order, not exact.

An instrument's store keeps one update per INSTRUMENT_STORE_INTERVAL_MS: what is replayed of it
from the store, before the hub's recent ticks take over, lacks the updates in between, and a `gap`
event says so (the stored ones are replayed still: the client's chart stays drawn).

A replica that just started has no recent ticks, and its latest prices come from Redis's key,
ahead of the store by up to the persist interval: the ticks between the store's newest and that
latest price are in neither, and a `gap` event says so (the latest price itself goes out).

The store is read first (`fetch`, which awaits); the hub's recent ticks are merged in by `frames`,
in the same step of the event loop as the stream's subscriptions start, so a tick published in
between is in one or the other, never in both or in neither.

After a restart every client comes back within seconds, most from the same last event with the
same tickers: `Replays` gives resumes asked at about once one read of the store per distinct
resume (kit/batched.py), and the streams sharing it one encoding of each replayed tick.
"""

import asyncio
import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from cryptomarket.core.db import Database
from cryptomarket.instruments.names import is_instrument
from cryptomarket.kit.batched import Batched
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import PriceRepository, fields_of
from cryptomarket.streaming import events
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.streaming.stream import Stream

REPLAY_LIMIT = 1_000  # ticks per ticker a reconnecting client may catch up on
REPLAY_BUDGET = 5_000  # ticks in all: 47 every-tick tickers get about 100 each
REPLAY_FLOOR = 10  # ticks per ticker however many tickers share the budget
UNCERTAIN_MS = 5_000  # without a publish stamp: how far another ticker's ticks may be out of step
LEFT_OUT = "not replayed: more were missed than a reconnect replays"
UNCERTAIN = "not replayed: the resumed event is unknown, these may or may not have been sent"
THINNED = "not replayed: an instrument is stored once per INSTRUMENT_STORE_INTERVAL_MS"
NOT_STORED_YET = "not replayed: published just before this server started, not stored yet"


@dataclass
class Missed:
    """What the store holds of a reconnecting client's missed ticks, per ticker."""

    ticker: str  # of the event resumed from
    timestamp: int
    stamp: datetime | None  # its publish stamp; None: not found
    tickers: list[str]  # the stream's every-tick subscriptions
    store_interval_ms: int = 0  # INSTRUMENT_STORE_INTERVAL_MS: 0, every update is stored
    stored: dict[str, list[Tick]] = field(default_factory=dict)
    first_stored: dict[str, int] = field(default_factory=dict)  # when the store's answer was cut
    # X:T sent by a timer: the publish stamp of X's next tick, from which the replay is certain.
    certain_from: datetime | None = None
    # Gaps recorded since about where the client stopped: a gap published while it was away
    # (e.g. a restarted server's backfill, before its clients were back) reaches it this way.
    recorded_gaps: list[Gap] = field(default_factory=list)
    # The price frames of the ticks replayed so far, for the other streams sharing this read.
    encoded: dict[tuple[str, int], bytes] = field(default_factory=dict)

    @property
    def limit(self) -> int:
        """Ticks replayed per ticker: REPLAY_LIMIT, or the budget's share of each."""
        share = REPLAY_BUDGET // max(1, len(self.tickers))
        return min(REPLAY_LIMIT, max(REPLAY_FLOOR, share))

    @property
    def out_of_order(self) -> bool:
        """The resumed event went out by a timer, not in publish order."""
        return self.stamp is not None and self.ticker not in self.tickers

    def gaps_since(self, ticker: str) -> int:
        """From where a gap concerns the client: T for the resumed ticker; another ticker's
        position is known only to within UNCERTAIN_MS of T (a gap it already got may come
        again, which says nothing new; a gap missed would be a loss)."""
        return self.timestamp if ticker == self.ticker else self.timestamp - UNCERTAIN_MS

    def floor(self, ticker: str) -> int:
        """Without a publish stamp: the timestamp after which this ticker is replayed."""
        return self.timestamp if ticker == self.ticker else self.timestamp + UNCERTAIN_MS


async def fetch(
    hub: StreamHub,
    database: Database,
    tickers: list[str],
    resume: tuple[str, int],
    *,
    store_interval_ms: int = 0,
) -> Missed:
    ticker, timestamp = resume
    stamp = hub.publish_stamp(ticker, timestamp)
    missed = Missed(ticker, timestamp, stamp, tickers, store_interval_ms=store_interval_ms)
    if not tickers:
        return missed
    limit = missed.limit
    async with database.reading() as connection:
        repository = PriceRepository(connection, database.tables)
        if missed.stamp is None:
            missed.stamp = await repository.received_at_of(ticker, timestamp)
        if missed.stamp is not None and missed.out_of_order:
            following = await repository.first_published_after(ticker, missed.stamp)
            missed.certain_from = None if following is None else following.received_at
        for each in tickers:
            if missed.stamp is not None:
                ticks = await repository.published_after(each, missed.stamp, limit=limit + 1)
                cut = len(ticks) > limit
                following = (
                    await repository.first_published_after(each, missed.stamp) if cut else None
                )
                first = None if following is None else following.timestamp
            else:
                floor = missed.floor(each)
                rows = await repository.newest_after(each, floor, limit=limit + 1)
                ticks = [
                    Tick(row.ticker, row.price, row.timestamp, fields=fields_of(row))
                    for row in rows
                ]
                cut = len(ticks) > limit
                oldest = (
                    await repository.between(each, floor + 1, 2**62, after=None, limit=1)
                    if cut
                    else []
                )
                first = oldest[0].timestamp if oldest else None
            missed.stored[each] = ticks
            if first is not None:
                missed.first_stored[each] = first
            since = missed.gaps_since(each)
            missed.recorded_gaps.extend(await repository.gaps_between(each, since, 2**62))
    return missed


def frames(hub: StreamHub, stream: Stream, missed: Missed, skip: Iterable[str] = ()) -> list[bytes]:
    """The replay's frames (gaps first, then the ticks), with the hub's recent ticks merged in;
    the stream then takes each ticker's live ticks after what it has. `skip`: tickers no longer
    taken every tick (changed while the stream opened)."""
    skipped = set(skip)
    gaps: list[Gap] = []
    replayed: list[Tick] = []
    certain_from = _certain_from(hub, missed)
    limit = missed.limit
    for ticker in missed.tickers:
        if ticker in skipped:
            continue
        stored, recent = missed.stored.get(ticker, []), _recent(hub, missed, ticker)
        ticks = _merged(stored, recent)
        if (thinned := _thinned(missed, ticker, stored, recent)) is not None:
            gaps.append(thinned)
        if missed.out_of_order:
            uncertain = [t for t in ticks if certain_from is None or t.received_at < certain_from]
            if uncertain:
                ticks = [t for t in ticks if certain_from and t.received_at >= certain_from]
                gaps.append(Gap(ticker, uncertain[0].timestamp, uncertain[-1].timestamp, UNCERTAIN))
        if len(ticks) > limit:
            left_out = ticks[:-limit]
            ticks = ticks[-limit:]
            oldest = min(left_out[0].timestamp, missed.first_stored.get(ticker, math.inf))
            gaps.append(Gap(ticker, int(oldest), left_out[-1].timestamp, LEFT_OUT))
        if missed.stamp is None and ticker != missed.ticker:
            start, end = missed.timestamp - UNCERTAIN_MS, missed.floor(ticker)
            gaps.append(Gap(ticker, start, end, UNCERTAIN))
        replayed.extend(ticks)
        newest, unseen = _sent_up_to(hub, stream, missed, ticker, ticks)
        gaps.extend(unseen)
        if newest:
            stream.last_sent[ticker] = max(newest, stream.last_sent.get(ticker, 0))
    if missed.stamp is not None:
        replayed.sort(key=lambda tick: (tick.received_at, tick.ticker, tick.timestamp))
    else:
        replayed.sort(key=lambda tick: (tick.timestamp, tick.ticker))
    gaps.extend(gap for gap in missed.recorded_gaps if gap.ticker not in skipped)
    gaps.sort(key=lambda gap: (gap.from_ts, gap.ticker))
    return [events.gap_frame(gap) for gap in gaps] + [_encoded(missed, t) for t in replayed]


def _sent_up_to(
    hub: StreamHub, stream: Stream, missed: Missed, ticker: str, ticks: list[Tick]
) -> tuple[int, list[Gap]]:
    """The newest tick of `ticker` the client has once the replay is sent, and a gap for what
    it cannot get: the hub's latest price counts as had or replayed, unless it was read from
    Redis's latest-price key ahead of the store (a replica just started). Then it goes out on
    subscribe, and the ticks before it, in neither the store nor this hub, are a gap."""
    newest = ticks[-1].timestamp if ticks else 0
    latest = hub.latest.get(ticker)
    if latest is None:
        return newest, []
    known = max(newest, stream.last_sent.get(ticker, 0))
    if latest[0].timestamp <= known or not _ahead_of_store(hub, latest[0], missed):
        return max(newest, latest[0].timestamp), []
    start = known + 1 if known else missed.gaps_since(ticker)
    if start >= latest[0].timestamp:
        return newest, []
    return newest, [Gap(ticker, start, latest[0].timestamp - 1, NOT_STORED_YET)]


def _ahead_of_store(hub: StreamHub, latest: Tick, missed: Missed) -> bool:
    """Whether the hub's latest price is in neither the replay nor the client's past: published
    after the resume point, yet not replayed. One this hub published live was merged into the
    replay (or named in its gaps); one read from the store was replayed if published after the
    resume point (the store's answer reaches its newest tick); so one read from Redis's latest
    key ahead of the store. An unknown resume point has gaps of its own for what is uncertain."""
    if missed.stamp is None:
        return False
    if hub.publish_stamp(latest.ticker, latest.timestamp) is not None:
        return False
    return latest.received_at > missed.stamp


def _encoded(missed: Missed, tick: Tick) -> bytes:
    """A replayed tick's frame, made once for every stream sharing the read (a ticker has one
    tick per timestamp: the store's and the hub's are the same tick)."""
    key = (tick.ticker, tick.timestamp)
    frame = missed.encoded.get(key)
    if frame is None:
        frame = missed.encoded[key] = events.price_frame(tick)
    return frame


Resume = tuple[tuple[str, ...], tuple[str, int]]  # (every-tick tickers, the event resumed from)


class Replays:
    """Store reads of resumes asked at about once, shared (see the module's docstring). The
    Missed handed out is shared too: `frames` only reads it (and fills its encodings)."""

    def __init__(self, hub: StreamHub, database: Database, *, store_interval_ms: int) -> None:
        self.hub = hub
        self.database = database
        self.store_interval_ms = store_interval_ms
        self._reads: Batched[Resume, Missed] = Batched(self._fetch_all)

    @property
    def reads(self) -> int:
        """Reads of the store since start (each for one or more resumes)."""
        return self._reads.queries

    async def missed(self, tickers: list[str], resume: tuple[str, int]) -> Missed:
        found = await self._reads.get((tuple(tickers), resume))
        assert found is not None  # noqa: S101  # _fetch_all answers every key
        return found

    async def _fetch_all(self, resumes: list[Resume]) -> dict[Resume, Missed]:
        read = await asyncio.gather(
            *(
                fetch(
                    self.hub,
                    self.database,
                    list(tickers),
                    resume,
                    store_interval_ms=self.store_interval_ms,
                )
                for tickers, resume in resumes
            )
        )
        return dict(zip(resumes, read, strict=True))


def _thinned(missed: Missed, ticker: str, stored: list[Tick], recent: list[Tick]) -> Gap | None:
    """The span an instrument is replayed from its thinned store, up to the hub's recent ticks."""
    if missed.store_interval_ms <= 0 or not is_instrument(ticker):
        return None
    takes_over = recent[0].timestamp if recent else math.inf
    older = [tick.timestamp for tick in stored if tick.timestamp < takes_over]
    if not older:
        return None
    since = missed.timestamp + 1 if ticker == missed.ticker else missed.timestamp - UNCERTAIN_MS
    until = recent[0].timestamp - 1 if recent else older[-1]
    return Gap(ticker, min(since, older[0]), until, THINNED)


def _certain_from(hub: StreamHub, missed: Missed) -> datetime | None:
    """For a resumed event sent by a timer: when X's next tick was published (the store's
    answer, else the hub's, which may have one by now)."""
    if not missed.out_of_order or missed.certain_from is not None or missed.stamp is None:
        return missed.certain_from
    following = recent_after(hub, missed.ticker, missed.stamp)
    return following[0].received_at if following else None


def _recent(hub: StreamHub, missed: Missed, ticker: str) -> list[Tick]:
    if missed.stamp is not None:
        return recent_after(hub, ticker, missed.stamp)
    floor = missed.floor(ticker)
    return [tick for tick in hub.recent.get(ticker, ()) if tick.timestamp > floor]


def _merged(stored: Iterable[Tick], recent: Iterable[Tick]) -> list[Tick]:
    """One tick per timestamp (the store and the hub overlap), oldest first: a ticker's ticks
    are published in timestamp order."""
    by_timestamp = {tick.timestamp: tick for tick in stored}
    by_timestamp.update((tick.timestamp, tick) for tick in recent)
    return [by_timestamp[timestamp] for timestamp in sorted(by_timestamp)]


def recent_after(hub: StreamHub, ticker: str, stamp: datetime) -> list[Tick]:
    """The hub's recent ticks of a ticker published after `stamp`, in publish order."""
    recent = hub.recent.get(ticker, ())
    at = bisect.bisect_right(recent, stamp, key=_received_at)
    return [recent[index] for index in range(at, len(recent))]


def _received_at(tick: Tick) -> datetime:
    return tick.received_at
