"""Last-Event-ID replay across tickers, from the hub, from the store after a restart and beyond the
hub's recent ticks, on SQLite and PostgreSQL.

Ticks are built with explicit publish stamps (`received_at`), as ingest hands them to the bus:
two tickers stamped a few ms apart, published in either order.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from __tests__.databases import fresh_database_url
from __tests__.helpers import eventually
from __tests__.service import running_service
from __tests__.sse import Event, SSEParser, open_stream
from cryptomarket.core.config import Settings
from cryptomarket.core.db import Database, urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.streaming import replay
from cryptomarket.streaming.endpoints import open_event_stream
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.streaming.limits import OpenLimiter
from cryptomarket.streaming.replay import Replays
from cryptomarket.subscriptions.service import NoWatchers, SubscriptionService
from cryptomarket.users.auth import Caller

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database_url(request, request.param, tmp_path) as url:
        upgrade(urls_for(url).sync_url)
        yield url


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    yield database
    await database.dispose()


@dataclass
class StoredSubscriptions:
    """The subscription service as the stream sees it: the user's stored subscriptions."""

    stored: dict[str, int | None]

    async def subscriptions(self, user_id: str) -> dict[str, int | None]:
        return dict(self.stored)

    async def load_latest(self, tickers: list[str]) -> None:
        return None


@dataclass
class Serving:
    """One serving process: its hub (new after a restart) over the shared store."""

    database: Database
    subscriptions: StoredSubscriptions
    hub: StreamHub = field(default_factory=lambda: StreamHub(max_streams=10, max_per_user=10))
    stream_opens: OpenLimiter = field(default_factory=lambda: OpenLimiter(burst=10_000))
    settings: Settings = field(default_factory=lambda: Settings(INSTRUMENT_STORE_INTERVAL_MS=1000))
    replays: Replays = field(init=False)

    def __post_init__(self) -> None:
        interval = self.settings.INSTRUMENT_STORE_INTERVAL_MS
        self.replays = Replays(self.hub, self.database, store_interval_ms=interval)

    async def publish(self, *ticks: Tick, stored: bool = True) -> None:
        """As ingest does: the writer stores each tick, the bus hands it to the hub."""
        if stored:
            async with self.database.transaction() as connection:
                await PriceRepository(connection, self.database.tables).add_ticks(list(ticks))
        for tick in ticks:
            self.hub.publish(tick)

    async def reconnect(self, last_event_id: str | None) -> list[Event]:
        """Open a stream resuming from `last_event_id`: what goes out first on it."""
        stream, opening = await open_event_stream(
            self,  # type: ignore[arg-type]  # the parts of a Runtime a stream uses
            Caller("alice", None),
            0,
            last_event_id,
        )
        self.hub.close(stream)
        return SSEParser().feed(opening.decode())


def tick(ticker: str, timestamp: int, published_ms: float) -> Tick:
    return Tick(ticker, float(timestamp), timestamp, START + timedelta(milliseconds=published_ms))


def sent(events: list[Event]) -> list[str]:
    return [e.id or "" for e in events if e.event == "price"]


def gaps(events: list[Event]) -> list[tuple[str, int, int]]:
    return [(e.data["ticker"], e.data["from"], e.data["to"]) for e in events if e.event == "gap"]


# Published in this order, each against the order of the timestamps: btc stamped 2 ms after eth
# but published first (the client had it before the eth tick it resumes from), and the reverse.
BTC_STAMPED_LATER = [("btc_usd", 1_002), ("eth_usd", 1_000), ("btc_usd", 2_002), ("eth_usd", 2_000)]
BTC_STAMPED_EARLIER = [
    ("eth_usd", 1_002),
    ("btc_usd", 1_000),
    ("eth_usd", 2_002),
    ("btc_usd", 2_000),
]


@pytest.mark.parametrize("published", [BTC_STAMPED_LATER, BTC_STAMPED_EARLIER])
@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "after-restart"])
async def test_replay_across_two_tickers_sends_each_missed_tick_once_in_order(
    database: Database, published: list[tuple[str, int]], restarted: bool
) -> None:
    subscriptions = StoredSubscriptions({"btc_usd": 0, "eth_usd": 0})
    serving = Serving(database, subscriptions)
    ticks = [tick(ticker, ts, index) for index, (ticker, ts) in enumerate(published)]
    await serving.publish(*ticks)
    if restarted:  # a new process: nothing in its hub, everything in the store
        serving = Serving(database, subscriptions)
    for got in range(len(ticks)):  # the client had ticks[: got + 1]
        resumed = await serving.reconnect(f"{ticks[got].ticker}:{ticks[got].timestamp}")
        expected = [f"{t.ticker}:{t.timestamp}" for t in ticks[got + 1 :]]
        assert sent(resumed) == expected, f"resumed after {ticks[got]}"
        assert gaps(resumed) == []


async def test_clients_resuming_from_one_event_at_once_share_one_read_of_the_store(
    database: Database,
) -> None:
    """A restart's storm: every client back at once, from the same last event."""
    subscriptions = StoredSubscriptions({"btc_usd": 0, "eth_usd": 0})
    serving = Serving(database, subscriptions)
    ticks = [tick(("btc_usd", "eth_usd")[n % 2], 1_000 + n, n) for n in range(10)]
    await serving.publish(*ticks)
    serving = Serving(database, subscriptions)  # restarted: everything comes from the store
    resumed = await asyncio.gather(*(serving.reconnect("eth_usd:1003") for _ in range(5)))
    expected = [f"{t.ticker}:{t.timestamp}" for t in ticks[4:]]
    assert [sent(events) for events in resumed] == [expected] * 5
    assert serving.replays.reads == 1
    # One resumed later than that read began is read again: it may have missed a newer store.
    again = await serving.reconnect("eth_usd:1003")
    assert sent(again) == expected
    assert serving.replays.reads == 2


async def test_replay_beyond_the_hubs_recent_ticks_comes_from_the_store(database: Database) -> None:
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0, "eth_usd": 0}))
    serving.hub.recent_size = 3  # the hub keeps the 3 newest ticks of each ticker
    ticks = [tick(("btc_usd", "eth_usd")[n % 2], 1_000 + n, n) for n in range(20)]
    await serving.publish(*ticks)
    assert len(serving.hub.recent["btc_usd"]) == 3
    resumed = await serving.reconnect("eth_usd:1003")
    assert sent(resumed) == [f"{t.ticker}:{t.timestamp}" for t in ticks[4:]]
    assert gaps(resumed) == []
    # The resumed tick itself is only in the store: its publish stamp is found there.
    resumed = await serving.reconnect("btc_usd:1000")
    assert sent(resumed) == [f"{t.ticker}:{t.timestamp}" for t in ticks[1:]]


@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "after-restart"])
async def test_an_instrument_replayed_from_its_thinned_store_comes_with_a_gap(
    database: Database, restarted: bool
) -> None:
    """Ten updates a second, one a second stored: what the store replays lacks nine in ten, and
    the client is told so up to where the hub's recent updates take over."""
    serving = Serving(database, StoredSubscriptions({"BTC-PERPETUAL": 0}))
    serving.hub.recent_size = 5
    ticks = [
        replace(tick("BTC-PERPETUAL", 1_000 + 100 * n, n), fields={"mark_price": float(n)})
        for n in range(40)
    ]
    for n, each in enumerate(ticks):
        await serving.publish(each, stored=n % 10 == 0)  # 1000, 2000, 3000, 4000 stored
    if restarted:
        serving = Serving(database, serving.subscriptions)
    resumed = await serving.reconnect("BTC-PERPETUAL:1100")
    stored_ids = ["BTC-PERPETUAL:2000", "BTC-PERPETUAL:3000", "BTC-PERPETUAL:4000"]
    if restarted:  # the store alone: a gap to its newest row
        assert sent(resumed) == stored_ids
        assert gaps(resumed) == [("BTC-PERPETUAL", 1_101, 4_000)]
    else:  # the hub's five newest take over from 4500
        assert sent(resumed) == [
            *stored_ids,
            *(f"BTC-PERPETUAL:{ts}" for ts in range(4500, 4901, 100)),
        ]
        assert gaps(resumed) == [("BTC-PERPETUAL", 1_101, 4_499)]
        # From within the hub's recent updates: the rest of them, and no gap.
        resumed = await serving.reconnect("BTC-PERPETUAL:4600")
        assert sent(resumed) == [f"BTC-PERPETUAL:{ts}" for ts in (4700, 4800, 4900)]
        assert gaps(resumed) == []


async def test_a_bounded_replay_sends_a_gap_for_what_it_leaves_out(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replay, "REPLAY_LIMIT", 5)
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0, "eth_usd": 0}))
    serving.hub.recent_size = 3
    btc = [tick("btc_usd", 1_000 + n, 2 * n) for n in range(12)]
    eth = [tick("eth_usd", 5_000 + n, 2 * n + 1) for n in range(3)]
    await serving.publish(*sorted(btc + eth, key=lambda t: t.received_at))
    resumed = await serving.reconnect("btc_usd:1000")
    # btc: 11 missed (1001..1011), the newest 5 replayed; eth: all 3 missed, replayed.
    assert gaps(resumed) == [("btc_usd", 1_001, 1_006)]
    assert [e.event for e in resumed[:2]] == ["connected", "gap"]
    newest_btc = {f"btc_usd:{ts}" for ts in range(1_007, 1_012)}
    assert set(sent(resumed)) == newest_btc | {f"eth_usd:{5_000 + n}" for n in range(3)}


async def test_many_every_tick_tickers_share_one_replay_budget(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As 47 tickers resumed from long ago would: each gets its share, the rest is a gap.
    monkeypatch.setattr(replay, "REPLAY_BUDGET", 12)
    monkeypatch.setattr(replay, "REPLAY_FLOOR", 1)
    names = ["btc_usd", "eth_usd", "sol_usd", "xrp_usd"]
    serving = Serving(database, StoredSubscriptions(dict.fromkeys(names, 0)))
    serving.hub.recent_size = 2
    ticks = [tick(name, 1_000 + n, 4 * n + i) for n in range(10) for i, name in enumerate(names)]
    await serving.publish(*ticks)
    resumed = await serving.reconnect("btc_usd:1000")
    replayed = sent(resumed)
    assert len(replayed) == 12  # the budget, not 4 x 9 missed
    for name in names:  # the newest 3 of each, and a gap for what came before them
        assert [i for i in replayed if i.startswith(name)] == [
            f"{name}:{ts}" for ts in (1007, 1008, 1009)
        ]
    first_missed = {name: 1_001 if name == "btc_usd" else 1_000 for name in names}
    assert sorted(gaps(resumed)) == sorted((name, first_missed[name], 1_006) for name in names)


async def test_an_unknown_resume_point_falls_back_to_timestamps_with_a_gap(
    database: Database,
) -> None:
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0, "eth_usd": 0}))
    stamps = [1_000, 4_000, 9_000, 20_000]
    await serving.publish(
        *[tick(name, ts, ts + n) for ts in stamps for n, name in enumerate(("btc_usd", "eth_usd"))]
    )
    resumed = await serving.reconnect("btc_usd:3000")  # never published: pruned, or made up
    uncertain = ("eth_usd", 3_000 - replay.UNCERTAIN_MS, 3_000 + replay.UNCERTAIN_MS)
    assert gaps(resumed) == [uncertain]
    assert sent(resumed) == [
        "btc_usd:4000",
        "btc_usd:9000",
        "eth_usd:9000",
        "btc_usd:20000",
        "eth_usd:20000",
    ]


async def test_live_ticks_follow_the_replay_without_overlap(database: Database) -> None:
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0, "eth_usd": 0}))
    await serving.publish(tick("btc_usd", 1_000, 0), tick("eth_usd", 1_001, 1))
    stream, opening = await open_event_stream(
        serving,  # type: ignore[arg-type]
        Caller("alice", None),
        0,
        "btc_usd:1000",
    )
    assert sent(SSEParser().feed(opening.decode())) == ["eth_usd:1001"]
    assert stream._buffer == []  # the latest prices are not sent again on connect
    serving.hub.publish(tick("btc_usd", 2_000, 2))
    assert b"id: btc_usd:2000" in b"".join(stream._buffer)
    serving.hub.close(stream)


async def test_replay_after_a_server_restart_sends_what_the_first_server_stored(
    simulator: Simulator, database_url: str
) -> None:
    tickers = ("btc_usd", "eth_usd")
    async with running_service(simulator, database_url) as first:
        token = await first.sign_in("alice")
        async with first.client_for(token) as client:
            for ticker in tickers:
                created = await client.get(f"/api/v1/market/alice/create_order/{ticker}?timer=0")
                assert created.status_code in (200, 201), created.text
            async with open_stream(client) as stream:
                seen = [await stream.until("price") for _ in range(10)]
        resumed_from = seen[-1]
        await eventually(  # ticks the client misses, stored by this server only
            lambda: simulator.history("btc_usd")[-1][0] > resumed_from.data["timestamp"] + 500,
            what="half a second of missed ticks",
        )
    database = Database(database_url)
    async with database.reading() as connection:
        stored_until = {
            ticker: await PriceRepository(connection, database.tables).last_timestamp(ticker)
            for ticker in tickers
        }
    await database.dispose()
    async with (
        running_service(simulator, database_url) as second,
        second.client_for(token) as client,
        open_stream(client, headers={"Last-Event-ID": resumed_from.id or ""}) as stream,
    ):
        await stream.until("connected")
        replayed = [await stream.until("price") for _ in range(10)]
        replayed += await stream.events_for(0.5)
    got = [e for e in seen + replayed if e.event == "price"]
    ids = [e.id for e in got]
    assert len(ids) == len(set(ids)), "a tick came twice"
    for ticker in tickers:
        stamps = [e.data["timestamp"] for e in got if e.data["ticker"] == ticker]
        until = stored_until[ticker]
        assert until is not None
        stamps = [ts for ts in stamps if ts <= until]  # after: live, or the restart's backfill
        produced = [ts for ts, _ in simulator.history(ticker) if stamps[0] <= ts <= until]
        assert stamps == produced, f"{ticker}: the replay is not what the first server stored"


@pytest.mark.parametrize("restarted", [False, True], ids=["same-process", "after-restart"])
async def test_resuming_from_a_timer_price_names_the_uncertain_ticks_in_a_gap(
    database: Database, restarted: bool
) -> None:
    """btc comes by a timer: its price went out after it was published, before btc's next
    tick was; the eth ticks published in between may or may not have gone out before it."""
    subscriptions = StoredSubscriptions({"btc_usd": 5, "eth_usd": 0})
    serving = Serving(database, subscriptions)
    published = [("btc_usd", 1_000), ("eth_usd", 1_001), ("eth_usd", 1_002), ("btc_usd", 1_003)]
    ticks = [tick(ticker, ts, index) for index, (ticker, ts) in enumerate(published)]
    await serving.publish(*ticks, tick("eth_usd", 1_004, 4))
    if restarted:
        serving = Serving(database, subscriptions)
    resumed = await serving.reconnect("btc_usd:1000")
    assert gaps(resumed) == [("eth_usd", 1_001, 1_002)]
    assert sent(resumed) == ["eth_usd:1004"]
    resumed = await serving.reconnect("btc_usd:1003")  # no btc tick after it yet
    assert gaps(resumed) == [("eth_usd", 1_004, 1_004)]
    assert sent(resumed) == []


async def test_the_latest_prices_on_connect_go_out_in_publish_order(database: Database) -> None:
    """So resuming from the last of them repeats none: eth's latest was published first."""
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0, "eth_usd": 0}))
    await serving.publish(tick("eth_usd", 1_000, 0), tick("btc_usd", 1_001, 1))
    stream, _ = await open_event_stream(
        serving,  # type: ignore[arg-type]
        Caller("alice", None),
        0,
        None,
    )
    first = sent(SSEParser().feed(b"".join(stream._buffer).decode()))
    serving.hub.close(stream)
    assert first == ["eth_usd:1000", "btc_usd:1001"]
    assert sent(await serving.reconnect(first[-1])) == []


async def test_a_gap_recorded_while_the_client_was_away_is_replayed(database: Database) -> None:
    # A restarted server records the outage's gap before its clients are back: the gap event
    # went to no stream, so a client resuming from before it must get it in its replay.
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0, "eth_usd": 0}))
    before = [tick("btc_usd", 1_000, 0), tick("eth_usd", 1_001, 1)]
    await serving.publish(*before)
    async with database.transaction() as connection:
        repository = PriceRepository(connection, database.tables)
        await repository.add_gap(Gap("btc_usd", 1_001, 4_999, "the server was down"))
        await repository.add_gap(Gap("eth_usd", 1_002, 4_999, "the server was down"))
        # Before the resumed tick, of the resumed ticker: the client had seen it.
        await repository.add_gap(Gap("eth_usd", 1, 500, "long before the client's last tick"))
    serving = Serving(database, serving.subscriptions)  # the restarted process
    after = [tick("btc_usd", 5_000, 10), tick("eth_usd", 5_001, 11)]
    await serving.publish(*after)
    resumed = await serving.reconnect("eth_usd:1001")
    assert gaps(resumed) == [("btc_usd", 1_001, 4_999), ("eth_usd", 1_002, 4_999)]
    assert sent(resumed) == ["btc_usd:5000", "eth_usd:5001"]


async def test_a_gap_published_while_a_stream_opens_reaches_it(database: Database) -> None:
    # The stream is registered, its stored subscriptions are being read (an await), and the
    # ingest publishes a gap just then: the stream takes no ticker yet, but must get the gap.
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0, "eth_usd": 5}))
    gap = Gap("btc_usd", 1_000, 2_000, "missed while the server restarted")
    other = Gap("sol_usdc", 1_000, 2_000, "a ticker the stream does not take")

    class PublishingMeanwhile(StoredSubscriptions):
        async def subscriptions(self, user_id: str) -> dict[str, int | None]:
            serving.hub.publish(gap)
            serving.hub.publish(other)
            return await super().subscriptions(user_id)

    serving.subscriptions = PublishingMeanwhile(serving.subscriptions.stored)
    opened = await serving.reconnect(None)
    assert gaps(opened) == [("btc_usd", 1_000, 2_000)]


async def test_a_gap_published_but_not_stored_yet_reaches_a_resuming_client(
    database: Database,
) -> None:
    # A restart's catch-up publishes its ticks, the outage's gap, then the held live ticks; the
    # writer stores the gap a moment later. A client resuming from before the gap in between
    # finds it in neither the store nor past its latest price: it must still be told.
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0}))
    await serving.publish(tick("btc_usd", 1_000, 0))
    serving.hub.publish(Gap("btc_usd", 1_001, 4_999, "the upstream was down"))  # not stored yet
    await serving.publish(tick("btc_usd", 5_000, 10), tick("btc_usd", 5_001, 11))
    resumed = await serving.reconnect("btc_usd:1000")
    assert gaps(resumed) == [("btc_usd", 1_001, 4_999)]
    assert sent(resumed) == ["btc_usd:5000", "btc_usd:5001"]
    async with database.transaction() as connection:  # stored now: told once, not twice
        await PriceRepository(connection, database.tables).add_gap(
            Gap("btc_usd", 1_001, 4_999, "the upstream was down")
        )
    assert gaps(await serving.reconnect("btc_usd:1000")) == [("btc_usd", 1_001, 4_999)]


async def test_a_latest_price_read_ahead_of_the_store_is_no_excuse_to_skip_ticks(
    database: Database,
) -> None:
    # A replica just started: its hub has no recent ticks yet, the store lags the bus by the
    # persist interval, and the stream's latest price came from Redis's latest-price key. The
    # ticks between the store's newest and that latest are in neither: a gap must say so, and
    # the latest price must still go out.
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0}))
    await serving.publish(tick("btc_usd", 1_000, 0), tick("btc_usd", 1_001, 1))
    serving = Serving(database, serving.subscriptions)  # the replica that just started
    serving.hub.remember_latest(tick("btc_usd", 1_003, 3))  # published, not stored yet
    stream, opening = await open_event_stream(
        serving,  # type: ignore[arg-type]  # the parts of a Runtime a stream uses
        Caller("alice", None),
        0,
        "btc_usd:1000",
    )
    resumed = SSEParser().feed((opening + b"".join(stream._buffer)).decode())
    serving.hub.close(stream)
    assert sent(resumed) == ["btc_usd:1001", "btc_usd:1003"]  # the latest, on subscribe
    assert gaps(resumed) == [("btc_usd", 1_002, 1_002)]


async def test_a_latest_price_the_client_had_is_not_sent_again_nor_a_gap(
    database: Database,
) -> None:
    serving = Serving(database, StoredSubscriptions({"btc_usd": 0, "eth_usd": 0}))
    await serving.publish(tick("eth_usd", 1_000, 0), tick("btc_usd", 1_001, 1))
    serving = Serving(database, serving.subscriptions)  # restarted: latest prices from the store
    reading = SubscriptionService(database, None, serving.hub, NoWatchers())  # type: ignore[arg-type]
    await reading.load_latest(["btc_usd", "eth_usd"])
    resumed = await serving.reconnect("btc_usd:1001")
    assert sent(resumed) == [] and gaps(resumed) == []


class ChangedMeanwhile(StoredSubscriptions):
    """The stored subscriptions, read while the user changes them (on this replica or another):
    the change reaches the streams the hub holds, the opening one among them, before the read
    returns; a tick is published too."""

    def __init__(self, serving: Serving, stored: dict[str, int | None], change: str) -> None:
        super().__init__(stored)
        self.serving = serving
        self.change = change

    async def subscriptions(self, user_id: str) -> dict[str, int | None]:
        hub = self.serving.hub
        for stream in hub.streams_of(user_id):
            if self.change == "cancel":
                hub.unsubscribe(stream, "btc_usd")
            else:
                hub.subscribe(stream, "btc_usd", {"same": 0, "timer": 5}[self.change])
        await self.serving.publish(tick("btc_usd", 1_003, 3))
        return await super().subscriptions(user_id)


@pytest.mark.parametrize("change", ["same", "timer", "cancel"])
async def test_a_change_made_while_a_stream_resumes_loses_no_tick(
    database: Database, change: str
) -> None:
    # A client re-creates its subscription (same timer), re-times or cancels it, while its
    # EventSource resumes: an every-tick subscription still gets every tick after its last
    # event, once; a changed one follows the change.
    serving = Serving(database, StoredSubscriptions({}))
    await serving.publish(*(tick("btc_usd", ts, ts - 1_000) for ts in (1_000, 1_001, 1_002)))
    serving.subscriptions = ChangedMeanwhile(serving, {"btc_usd": 0}, change)
    stream, opening = await open_event_stream(
        serving,  # type: ignore[arg-type]  # the parts of a Runtime a stream uses
        Caller("alice", None),
        0,
        "btc_usd:1000",
    )
    await serving.publish(tick("btc_usd", 1_004, 4))
    resumed = SSEParser().feed((opening + b"".join(stream._buffer)).decode())
    serving.hub.close(stream)
    connected = next(e for e in resumed if e.event == "connected")
    assert gaps(resumed) == []
    if change == "same":
        assert sent(resumed) == [f"btc_usd:{ts}" for ts in (1_001, 1_002, 1_003, 1_004)]
        assert connected.data["subscriptions"] == [{"ticker": "btc_usd", "timer": 0}]
    elif change == "timer":
        assert len(sent(resumed)) == 1  # its latest price, at once
        assert connected.data["subscriptions"] == [{"ticker": "btc_usd", "timer": 5}]
    else:
        assert sent(resumed) == [] and connected.data["subscriptions"] == []


@pytest.mark.parametrize("timer", [0, 5], ids=["resumed-every-tick", "timer"])
async def test_an_instrument_expiring_while_a_stream_opens_is_told_expired(
    database: Database, timer: int
) -> None:
    # The option's final frame goes out while the stream reads its stored subscriptions (the
    # ingest has not ended them yet): the stream must get that final price once and the
    # `expired` event, as the streams open at that moment did, not a subscription that stays
    # silent for good.
    option = "BTC-8JUN20-8750-P"
    serving = Serving(database, StoredSubscriptions({}))
    await serving.publish(Tick(option, 5.0, 1_000, START, fields={"mark_price": 5.0}))
    final = Tick(
        option,
        6.0,
        1_001,
        START + timedelta(milliseconds=1),
        fields={"mark_price": 6.0, "state": "closed", "delivery_price": 9728.65},
    )

    class ExpiringMeanwhile(StoredSubscriptions):
        async def subscriptions(self, user_id: str) -> dict[str, int | None]:
            await serving.publish(final)
            return await super().subscriptions(user_id)

    serving.subscriptions = ExpiringMeanwhile({option: timer, "btc_usd": 0})
    stream, opening = await open_event_stream(
        serving,  # type: ignore[arg-type]  # the parts of a Runtime a stream uses
        Caller("alice", None),
        0,
        f"{option}:1000" if timer == 0 else None,
    )
    opened = SSEParser().feed((opening + b"".join(stream._buffer)).decode())
    serving.hub.close(stream)
    assert sent(opened) == [f"{option}:1001"]
    told = [e.data for e in opened if e.event == "expired"]
    assert told == [
        {
            "ticker": option,
            "timestamp": 1_001,
            "datetime": "1970-01-01T00:00:01.001Z",
            "state": "closed",
            "delivery_price": 9728.65,
        }
    ]
    connected = next(e for e in opened if e.event == "connected")
    assert connected.data["subscriptions"] == [{"ticker": "btc_usd", "timer": 0}]
