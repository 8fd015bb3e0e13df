"""Persist ticks (and gaps) from the Redis stream into the database, in batches.

The stream is read through a consumer group: an entry is acknowledged only after the transaction
that stored it has committed, so a run that dies in between leaves it pending and the next run
stores it again (the upserts make that harmless). Entries are read once per group, so two runs
cannot both take a new entry; a per-job lock makes an overlapping run skip altogether.

When the group has to be created while the store already holds ticks, the stream is new: Redis
restarted and lost what had not been stored yet. The span between the newest stored tick and the
first one in the new stream is recorded as a gap, which the gap backfill then fills from Deribit.
That the stream is new is kept in Redis (NEW_STREAM_KEY, set with the group in one script) until
a batch with ticks has been stored, so a run that meets the new stream still empty, or dies
before storing, does not forget it. Each tick is stored with its publish-order stamp (the
header's `received_us`) as `received_at`.
"""

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
NEW_STREAM_KEY = "cryptomarket:persist:new-stream"

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
        new_stream = bool(redis.exists(NEW_STREAM_KEY))
        written = 0
        pending_first = True
        for _ in range(MAX_BATCHES):
            batch = _read(redis, "0" if pending_first else ">")
            if pending_first and not batch.ids:
                pending_first = False
                continue
            if not batch.ids:
                break
            if store_interval is not None:
                batch.ticks = [tick for tick in batch.ticks if store_interval.keep(tick)]
            checks_new_stream = new_stream and bool(batch.ticks)
            if checks_new_stream:
                batch.gaps.extend(_lost_before(engine, tables, batch.ticks))
            _store(engine, tables, batch)
            redis.xack(TICKS_STREAM, GROUP, *batch.ids)
            if checks_new_stream:
                redis.delete(NEW_STREAM_KEY)  # its loss is recorded now
                new_stream = False
            written += len(batch.ticks)
            if not lock.extend():
                logger.warning("persist lock lost mid-run (a batch took over %.0f s)", LOCK_TTL)
                break
        return written


def _ensure_group(redis: Redis) -> bool:
    """Create the consumer group if missing; True when it had to be (a new stream, marked)."""
    return bool(redis.eval(ENSURE_GROUP, 2, TICKS_STREAM, NEW_STREAM_KEY, GROUP))


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


def _lost_before(engine: Engine, tables: Tables, ticks: list[Tick]) -> list[Gap]:
    first: dict[str, int] = {}
    for tick in ticks:
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
