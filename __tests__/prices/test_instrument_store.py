"""Instrument ticks in the store, both databases: their own table with their fields, idempotent,
one per INSTRUMENT_STORE_INTERVAL_MS, read back by the same history queries as index prices."""

import csv
import io
import json
from dataclasses import replace

from cryptomarket.core.db import Database
from cryptomarket.instruments.frames import parse_ticker
from cryptomarket.instruments.store_interval import FORGET_AFTER_MS, StoreInterval
from cryptomarket.prices.export import tick_csv
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import PriceRepository, tick_of
from cryptomarket.prices.writer import TickWriter
from cryptomarket.streaming.redis_codec import pack, unpack

START = 1_790_000_000_000


def perpetual(i: int, step: int = 100) -> Tick:
    data = {
        "timestamp": START + i * step,
        "state": "open",
        "instrument_name": "BTC-PERPETUAL",
        "mark_price": 92_000.0 + i,
        "index_price": 91_990.0,
        "best_bid_price": 91_999.5 + i,
        "best_ask_price": 92_000.5 + i,
        "best_bid_amount": 1_000.0,
        "best_ask_amount": 2_000.0,
        "current_funding": 0.0001,
        "funding_8h": 0.00003,
        "stats": {"high": 93_000.0, "low": 90_000.0, "volume": 12.5, "price_change": 1.2},
    }
    tick = parse_ticker("BTC-PERPETUAL", data)
    assert tick is not None
    return tick


async def test_instrument_ticks_keep_their_fields_in_their_own_table(database: Database) -> None:
    batch = [perpetual(i) for i in range(20)]
    mixed = [*batch, Tick("btc_usd", 91_990.0, START)]
    for _ in range(2):  # a batch written again stores nothing twice
        async with database.transaction() as connection:
            await PriceRepository(connection, database.tables).add_ticks(mixed)
    async with database.reading() as connection:
        repository = PriceRepository(connection, database.tables)
        rows = await repository.between("BTC-PERPETUAL", START, START + 10**6, after=None, limit=99)
        latest = await repository.latest("BTC-PERPETUAL")
        index = await repository.between("btc_usd", START, START + 10**6, after=None, limit=99)
        candles = await repository.candles("BTC-PERPETUAL", 60_000, 60_000, 0, 2**62, limit=9)
    assert [row.timestamp for row in rows] == [tick.timestamp for tick in batch]
    assert [row.price for row in index] == [91_990.0]  # the index price stayed in its table
    assert latest is not None
    stored = tick_of(latest)
    assert stored.price == 92_019.0 and stored.fields is not None
    assert stored.fields["best_ask_price"] == 92_019.5
    assert stored.fields["current_funding"] == 0.0001
    assert stored.fields["stats"]["high"] == 93_000.0
    # Candles of an instrument are over its mark price.
    assert [(c.open, c.close, c.ticks) for c in candles] == [(92_000.0, 92_019.0, 20)]


async def test_the_writer_stores_one_update_per_interval_and_every_index_tick(
    database: Database,
) -> None:
    writer = TickWriter(database, flush_interval=0.01, store_interval_ms=1000)
    writer.start()
    updates = [perpetual(i, step=250) for i in range(12)]  # four a second, three seconds
    for tick in updates:
        writer.add(tick)
    writer.add(Tick("btc_usd", 1.0, START))
    writer.add(Tick("btc_usd", 2.0, START + 1))
    await writer.stop()
    async with database.reading() as connection:
        repository = PriceRepository(connection, database.tables)
        rows = await repository.between("BTC-PERPETUAL", START, START + 10**6, after=None, limit=99)
        index = await repository.between("btc_usd", START, START + 10**6, after=None, limit=99)
    assert [row.timestamp for row in rows] == [START, START + 1000, START + 2000]
    assert len(index) == 2


def test_the_store_interval_is_the_first_update_of_each_window_whatever_the_batches() -> None:
    ticks = [perpetual(i, step=300) for i in range(10)]  # 0, 300, ..., 2700 ms
    one = StoreInterval(1000)
    kept = [t.timestamp - START for t in ticks if one.keep(t)]
    assert kept == [0, 1200, 2100]
    split = StoreInterval(1000)
    again = [t.timestamp - START for t in ticks[:5] if split.keep(t)]
    again += [t.timestamp - START for t in ticks[5:] if split.keep(t)]
    assert again == kept
    assert all(StoreInterval(0).keep(t) for t in ticks)  # 0: every update
    assert StoreInterval(1000).keep(Tick("btc_usd", 1.0, START))


def test_the_store_interval_forgets_instruments_long_past_their_window() -> None:
    interval = StoreInterval(1000)
    assert interval.keep(perpetual(0))
    assert not interval.keep(perpetual(1))  # same window: dropped, so it is remembered
    later = replace(perpetual(0), timestamp=START + FORGET_AFTER_MS + 5_000)
    other = replace(later, ticker="ETH-PERPETUAL")
    assert interval.keep(other)
    assert len(interval) == 1  # BTC-PERPETUAL's window is long over: only ETH's is kept
    assert interval.keep(later)  # and BTC's next update, in a later window, is kept as before
    assert not interval.keep(replace(later, timestamp=later.timestamp + 100))


def test_an_instrument_tick_crosses_redis_with_its_fields() -> None:
    tick = perpetual(3)
    message = pack(tick)
    assert message.count(b'"funding_8h"') == 1  # its fields travel once, in the frame
    received, frame = unpack(message)
    assert isinstance(received, Tick) and received.fields == tick.fields
    assert frame is not None
    data = json.loads(frame.decode().split("data: ", 1)[1])
    assert data["ticker"] == "BTC-PERPETUAL" and data["price"] == tick.price
    assert data["best_bid_price"] == 92_002.5 and data["funding_8h"] == 0.00003


async def test_an_instruments_csv_has_its_fields_as_columns(database: Database) -> None:
    batch = [perpetual(i) for i in range(5)]
    async with database.transaction() as connection:
        await PriceRepository(connection, database.tables).add_ticks(batch)
    text = b"".join(
        [chunk async for chunk in tick_csv(database, "BTC-PERPETUAL", START, START + 10**6)]
    ).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(row["timestamp"]) for row in rows] == [tick.timestamp for tick in batch]
    first = rows[0]
    assert list(first)[:4] == ["ticker", "timestamp", "datetime", "price"]
    assert float(first["best_bid_price"]) == 91_999.5 and first["state"] == "open"
    assert float(first["stats_high"]) == 93_000.0 and first["greeks_delta"] == ""
    assert float(first["current_funding"]) == 0.0001 and first["delivery_price"] == ""


def test_an_entry_of_the_former_encoding_still_unpacks_with_its_fields() -> None:
    """Entries written before the fields moved to the frame stay in the stream for a while."""
    tick = perpetual(4)
    header, _, frame = pack(tick).partition(b"\n")
    old_header = json.loads(header)
    del old_header["instrument"]
    old_header["fields"] = dict(tick.fields or {})
    received, _ = unpack(json.dumps(old_header).encode() + b"\n" + frame)
    assert isinstance(received, Tick) and received.fields == tick.fields


async def test_the_write_buffer_bounds_memory_whatever_the_kind(database: Database) -> None:
    """An instrument's tick holds about ten index ticks' memory: it takes ten times the room, so
    a long outage with instruments stored at every update cannot outgrow the bound."""
    writer = TickWriter(database, max_buffer=100, store_interval_ms=0)  # not started: no writes
    for i in range(20):
        writer.add(perpetual(i))
    assert writer.buffered == 10 and writer.dropped == 10  # ten of ten rooms each
    assert writer.room_used == 100
    await writer.flush()
    assert writer.room_used == 0
    for i in range(100):
        writer.add(Tick("btc_usd", 1.0, START + i))
    assert writer.buffered == 100 and writer.dropped == 10
    await writer.stop()
