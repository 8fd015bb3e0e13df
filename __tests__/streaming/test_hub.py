"""The stream hub on its own: what closed streams, changed timers and instruments no longer
watched leave behind."""

import asyncio
import contextlib
import gc
import itertools
from datetime import UTC, datetime, timedelta

import pytest

from __tests__.sse import SSEParser
from cryptomarket.prices.models import Tick
from cryptomarket.streaming import hub as hub_module
from cryptomarket.streaming.hub import FORGET_QUIET_MS, StreamHub
from cryptomarket.streaming.stream import Stream


async def test_closed_streams_and_changed_timers_do_not_pile_up() -> None:
    hub = StreamHub(max_streams=100, max_per_user=100)
    for _ in range(5_000):  # a day-long timer: its entry would wait 24 h to come due
        stream = hub.open("alice", None)
        for ticker in ("btc_usd", "eth_usd", "sol_usdc"):
            hub.subscribe(stream, ticker, 86_400)
        hub.close(stream)
    kept = hub.open("alice", None)
    for timer in range(1, 5_001):  # create_order?timer= again and again on an open stream
        hub.subscribe(kept, "btc_usd", timer)
    assert len(hub.timers) < 200
    gc.collect()
    assert sum(isinstance(obj, Stream) for obj in gc.get_objects()) < 200
    hub.close(kept)


async def test_quiet_instruments_no_one_watches_are_forgotten() -> None:
    hub = StreamHub(max_streams=100, max_per_user=100)
    now = 1_790_000_000_000
    old = now - FORGET_QUIET_MS - 1
    for ticker in ("BTC-PERPETUAL", "ETH-PERPETUAL", "BTC-27MAR26", "btc_usd"):
        hub.publish(Tick(ticker, 1.0, old, fields={"mark_price": 1.0}))
    hub.publish(
        Tick("SOL_USDC-PERPETUAL", 1.0, now - 1_000, fields={"mark_price": 1.0})
    )  # quiet, not for long
    stream = hub.open("alice", None)
    hub.subscribe(stream, "ETH-PERPETUAL", 0)  # watched here: kept, however quiet
    assert sorted(hub.forget_quiet_instruments(now)) == ["BTC-27MAR26", "BTC-PERPETUAL"]
    assert set(hub.latest) == set(hub.recent) == {"ETH-PERPETUAL", "SOL_USDC-PERPETUAL", "btc_usd"}
    hub.close(stream)


async def test_a_timer_cancelled_and_set_again_keeps_its_cadence() -> None:
    hub = StreamHub(max_streams=10, max_per_user=10)
    hub.start()
    stream = hub.open("alice", None)
    stamps = itertools.count(1_790_000_000_000, 10)

    async def feed() -> None:  # a new price every 20 ms: every timer firing has one to send
        while True:
            hub.publish(Tick("btc_usd", 1.0, next(stamps)))
            await asyncio.sleep(0.02)

    feeder = asyncio.create_task(feed())
    try:
        hub.subscribe(stream, "btc_usd", 1)
        await asyncio.sleep(0.5)
        hub.unsubscribe(stream, "btc_usd")  # cancel_order, then create_order with the same timer
        hub.subscribe(stream, "btc_usd", 1)
        before = len(stream._buffer)
        await asyncio.sleep(3.2)  # the window measured: one price a second is three
        assert len(stream._buffer) - before == 3
    finally:
        feeder.cancel()
        hub.close(stream)
        await hub.stop()


async def test_a_timer_set_again_and_again_leaves_one_live_entry() -> None:
    hub = StreamHub(max_streams=10, max_per_user=10)
    stream = hub.open("alice", None)
    for _ in range(2_000):  # a client toggling create_order / cancel_order for days
        hub.subscribe(stream, "btc_usd", 60)
        hub.unsubscribe(stream, "btc_usd")
    hub.subscribe(stream, "btc_usd", 60)
    assert len(hub.timers) < 100
    hub.close(stream)


async def test_a_price_remembered_from_the_cache_still_goes_out_live() -> None:
    # A stream opening reads the newest price from Redis's key (or the store) while pub/sub has
    # not handed that very tick over yet: when it comes, every timer=0 stream must still get it.
    hub = StreamHub(max_streams=10, max_per_user=10)
    t4, t5 = (Tick("btc_usd", float(n), 1_790_000_000_000 + n) for n in (4, 5))
    hub.publish(t4)
    watching = hub.open("alice", None)
    hub.subscribe(watching, "btc_usd", 0)
    hub.remember_latest(t5)
    hub.publish(t5)
    sent = b"".join(watching._buffer)
    assert sent.count(b'"timestamp":1790000000004') == 1
    assert sent.count(b'"timestamp":1790000000005') == 1
    assert [tick.timestamp for tick in hub.recent["btc_usd"]] == [t4.timestamp, t5.timestamp]
    hub.close(watching)


async def test_an_expired_instrument_is_remembered_and_its_recent_ticks_forgotten_later() -> None:
    hub = StreamHub(max_streams=10, max_per_user=10)
    now = 1_790_000_000_000
    option = "BTC-8JUN20-8750-P"
    hub.publish(Tick(option, 1.0, now - 2_000, fields={"mark_price": 1.0}))
    final = Tick(option, 1.0, now - 1_000, fields={"mark_price": 1.0, "state": "closed"})
    hub.publish(final)
    assert option not in hub.latest and len(hub.recent[option]) == 2  # for replays, a while
    assert hub.expired[option][0] == final
    hub.forget_quiet_instruments(now)
    assert option in hub.recent
    hub.forget_quiet_instruments(now + FORGET_QUIET_MS)
    assert option not in hub.recent and option in hub.expired
    late = hub.open("alice", None)  # its store not cleared yet: subscribed, told at once
    hub.subscribe(late, option, 0)
    assert option not in late.timers and b"event: expired" in b"".join(late._buffer)
    hub.close(late)


async def test_a_timer_stream_dropped_by_its_own_timer_stops_no_other_stream() -> None:
    # A client that stopped reading fills its buffer with timer prices until the timer's own
    # push drops it: the one scheduler of every timer stream of the process must carry on.
    hub = StreamHub(max_streams=10, max_per_user=10, client_buffer=1)
    hub.start()
    hub.publish(Tick("btc_usd", 1.0, 1_790_000_000_000))
    stalled, reading = hub.open("alice", None), hub.open("bob", None)
    try:
        hub.subscribe(stalled, "btc_usd", 1)
        hub.subscribe(reading, "btc_usd", 1)
        stamps = itertools.count(1_790_000_000_001)
        while not stalled.dropped:  # a new price for each firing; bob reads his
            hub.publish(Tick("btc_usd", 1.0, next(stamps)))
            assert await asyncio.wait_for(reading.next_chunk(), 2.0)
        hub.publish(Tick("btc_usd", 1.0, next(stamps)))
        assert await asyncio.wait_for(reading.next_chunk(), 2.0)  # the scheduler still runs
    finally:
        hub.close(reading)
        await hub.stop()


async def test_a_latest_price_sent_on_subscribe_does_not_rewind_the_resume_point() -> None:
    # btc 1000, eth 1100, btc 2000 are published; a stream on btc (every tick) then subscribes
    # eth and gets its latest at once. With its id, a client resuming from eth_usd:1100 would
    # be replayed btc_usd:2000, which it has: the price goes without one.
    hub = StreamHub(max_streams=10, max_per_user=10)
    start = datetime(2026, 12, 1, tzinfo=UTC)
    stream = hub.open("alice", None)
    hub.subscribe(stream, "btc_usd", 0)
    for n, (ticker, timestamp) in enumerate((("btc_usd", 1_000), ("eth_usd", 1_100))):
        hub.publish(Tick(ticker, 1.0, timestamp, start + timedelta(milliseconds=n)))
    hub.publish(Tick("btc_usd", 1.0, 2_000, start + timedelta(milliseconds=2)))
    hub.subscribe(stream, "eth_usd", 0)
    sent = SSEParser().feed(b"".join(stream._buffer).decode())
    assert [(e.data["ticker"], e.data["timestamp"], e.id) for e in sent] == [
        ("btc_usd", 1_000, "btc_usd:1000"),
        ("btc_usd", 2_000, "btc_usd:2000"),
        ("eth_usd", 1_100, None),
    ]
    hub.publish(Tick("eth_usd", 1.0, 2_100, start + timedelta(milliseconds=3)))
    assert b"id: eth_usd:2100" in stream._buffer[-1]  # the next ones carry theirs
    hub.close(stream)


async def test_a_stream_registered_after_shutdown_began_ends_at_once() -> None:
    # SIGTERM came while a request was still signing in (a key checked with Deribit): the
    # stream it registers after must end as soon as its opening is out, not keep the server
    # waiting out its graceful timeout and then cut the body short.
    hub = StreamHub(max_streams=10, max_per_user=10)
    hub.shut_down()  # SIGTERM
    late = hub.open("alice", None, settle_later=True)
    hub.settle(late, {"btc_usd": 0})
    assert await asyncio.wait_for(late.next_chunk(), 1.0) is None
    hub.close(late)


async def test_a_stream_ended_while_its_client_does_not_read_is_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Signed out while its tab is frozen: the writer waits on a client that never reads, and
    # no later push can drop a closed stream. Its slot (the user's stream limit) must come back.
    monkeypatch.setattr(hub_module, "END_GRACE", 0.05)
    hub = StreamHub(max_streams=10, max_per_user=10)
    stream = hub.open("alice", None, token="t")
    stream.writer = asyncio.create_task(asyncio.Event().wait())  # stuck sending
    assert hub.end_session("t") == 1
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(stream.writer, 1.0)
    assert stream.writer.cancelled() and hub.open_streams == 0
