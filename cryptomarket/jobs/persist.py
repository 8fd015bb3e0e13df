"""Persist ticks (and gaps) from the Redis stream into the database, in batches.

The stream is read through a consumer group: an entry is acknowledged only after the transaction
that stored it has committed, so a run that dies in between leaves it pending and the next run
stores it again (the upserts make that harmless). Entries are read once per group, so two runs
cannot both take a new entry; a per-job lock makes an overlapping run skip altogether.

When the group has to be created while the store already holds ticks, the stream is new: Redis
restarted and lost what had not been stored yet. The span between the newest stored tick and the
first one in the new stream is recorded as a gap, which the gap backfill then fills from Deribit.
That the stream is new is kept in Redis (NEW_STREAM_KEY, set with the group in one script), so a
run that meets the new stream still empty, or dies before storing, does not forget it. Each ticker
is checked once (NEW_STREAM_CHECKED), when its first ticks in the new stream are stored: not all
tickers tick in the first batch. The check ends NEW_STREAM_WINDOW_MS after the new stream's first
tick: a ticker first seen later was not ingested when Redis restarted (its span since the store's
newest was watched by no one, not lost). Each tick is stored with its publish-order stamp (the
header's `received_us`) as `received_at`.
"""

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from sqlalchemy import Engine, func, select

from cryptomarket.core.tables import Tables
from cryptomarket.instruments.store_interval import StoreInterval
from cryptomarket.jobs.locks import job_lock
from cryptomarket.prices.kinds import kind_of
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import store_ticks, upsert_gap
from cryptomarket.streaming.redis_bus import TICKS_STREAM, unpack

logger = logging.getLogger("cryptomarket.jobs.persist")

GROUP = "persist"
CONSUMER = "persist"
BATCH = 5_000
MAX_BATCHES = 40  # per run; the next run goes on
LOCK_TTL = 10.0  # renewed after every batch; a killed run blocks the next for this long
LOST_STREAM_REASON = "Redis lost these ticks before they were stored"
NEW_STREAM_KEY = "cryptomarket:persist:new-stream"  # "1", then the new stream's first tick ms
NEW_STREAM_CHECKED = "cryptomarket:persist:new-stream-checked"  # tickers checked for a loss
NEW_STREAM_WINDOW_MS = 60_000

# Create the group (and the stream) unless it exists; when it had to be created, mark the stream
# new in the same step, so no run can see the group without the mark.
ENSURE_GROUP = """
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(created) == 'table' and created.err then
  if string.find(created.err, 'BUSYGROUP', 1, true) then
    return 0
  end
  return redis.error_reply(created.err)
end
redis.call('SET', KEYS[2], '1')
redis.call('DEL', KEYS[3])
return 1
"""


@dataclass
class Batch:
    ids: list[bytes] = field(default_factory=list)
    ticks: list[Tick] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


def persist_ticks(
    redis: Redis, engine: Engine, tables: Tables, store_interval: StoreInterval | None = None
) -> int:
    """Store what the stream holds; returns how many ticks were written (0 when another run
    holds the lock). `store_interval`: which instrument updates are stored (all when None)."""
    with job_lock(redis, "persist", LOCK_TTL) as lock:
        if not lock.held:
            logger.info("another persist run is in progress; skipped")
            return 0
        _ensure_group(redis)
        new_stream = _new_stream_start(redis)
        written = 0
        pending_first = True
        for _ in range(MAX_BATCHES):
            batch = _read(redis, "0" if pending_first else ">")
            if pending_first and not batch.ids:
                pending_first = False
                continue
            if not batch.ids:
                break
            checked: set[str] = set()
            choosing = store_interval.choosing() if store_interval is not None else None
            with choosing or contextlib.nullcontext():
                if store_interval is not None:
                    batch.ticks = [tick for tick in batch.ticks if store_interval.keep(tick)]
                if new_stream is not None and batch.ticks:
                    if new_stream == 0:  # its first ticks: the window starts
                        new_stream = min(tick.timestamp for tick in batch.ticks)
                        redis.set(NEW_STREAM_KEY, str(new_stream))
                    checked = _unchecked(redis, batch.ticks, new_stream + NEW_STREAM_WINDOW_MS)
                    batch.gaps.extend(_lost_before(engine, tables, batch.ticks, checked))
                _store(engine, tables, batch)
            redis.xack(TICKS_STREAM, GROUP, *batch.ids)
            if checked:  # their loss is recorded now
                redis.sadd(NEW_STREAM_CHECKED, *checked)
            if new_stream and max((t.timestamp for t in batch.ticks), default=0) >= (
                new_stream + NEW_STREAM_WINDOW_MS
            ):
                redis.delete(NEW_STREAM_KEY, NEW_STREAM_CHECKED)  # every loss recorded
                new_stream = None
            written += len(batch.ticks)
            if not lock.extend():
                logger.warning("persist lock lost mid-run (a batch took over %.0f s)", LOCK_TTL)
                break
        return written


def _ensure_group(redis: Redis) -> bool:
    """Create the consumer group if missing; True when it had to be (a new stream, marked)."""
    keys = (TICKS_STREAM, NEW_STREAM_KEY, NEW_STREAM_CHECKED)
    return bool(redis.eval(ENSURE_GROUP, len(keys), *keys, GROUP))


def _new_stream_start(redis: Redis) -> int | None:
    """None: the stream is not new; 0: new, no tick of it stored yet; else its first tick's ms."""
    mark: Any = redis.get(NEW_STREAM_KEY)
    if mark is None:
        return None
    return int(mark) if mark != b"1" else 0


def _unchecked(redis: Redis, ticks: list[Tick], window_end: int) -> set[str]:
    """The tickers first met in the new stream's window and not checked for a loss yet."""
    met = {tick.ticker for tick in ticks if tick.timestamp < window_end}
    done: Any = redis.smembers(NEW_STREAM_CHECKED)
    return met - {name.decode() if isinstance(name, bytes) else name for name in done}


def _read(redis: Redis, position: str) -> Batch:
    answer: Any = redis.xreadgroup(GROUP, CONSUMER, {TICKS_STREAM: position}, count=BATCH)
    batch = Batch()
    for _stream, entries in answer or []:
        for entry_id, fields in entries:
            batch.ids.append(entry_id)
            data = (fields or {}).get(b"event")
            if not isinstance(data, bytes):
                continue  # acknowledged and skipped: nothing to store
            try:
                event, _frame = unpack(data)
            except (ValueError, KeyError, TypeError):
                logger.warning("skipped a malformed stream entry")
                continue
            if isinstance(event, Tick):
                batch.ticks.append(event)
            elif isinstance(event, Gap):
                batch.gaps.append(event)
    return batch


def _lost_before(engine: Engine, tables: Tables, ticks: list[Tick], tickers: set[str]) -> list[Gap]:
    """For each of `tickers`, the span from the store's newest tick to its first in `ticks`."""
    first: dict[str, int] = {}
    for tick in ticks:
        if tick.ticker in tickers:
            first[tick.ticker] = min(tick.timestamp, first.get(tick.ticker, tick.timestamp))
    gaps = []
    with engine.connect() as connection:
        for ticker, earliest in first.items():
            column = kind_of(ticker).table(tables).c
            newest = connection.execute(
                select(func.max(column.timestamp)).where(column.ticker == ticker)
            ).scalar()
            if newest is not None and earliest > newest + 1:
                gaps.append(Gap(ticker, int(newest) + 1, earliest - 1, LOST_STREAM_REASON))
    if gaps:
        logger.warning("the tick stream is new: recorded %d gap(s) to backfill", len(gaps))
    return gaps


def _store(engine: Engine, tables: Tables, batch: Batch) -> None:
    dialect = engine.dialect.name
    with engine.begin() as connection:
        store_ticks(connection, tables, batch.ticks)
        for gap in batch.gaps:
            connection.execute(upsert_gap(tables, dialect, gap))
