"""Ticks into the store in batches, riding out database outages in a bounded buffer.

Ingest hands every tick to `add`, which never blocks. A background task writes a tick at once when
the last write is `flush_interval` seconds old, else what has gathered once it is (or as soon as a
batch is full): at most about one write per interval, and no timer waking an idle process.
While the database is down, the batch stays at the head of the buffer and is written again after
a backoff, so nothing in the buffer is lost. The bound is one on memory: an instrument's tick
takes INSTRUMENT_ROOM times an index tick's room. When the buffer is full, new ticks are not
kept: each ticker's dropped range is recorded as a gap once the database is back (filling
recorded gaps from Deribit later is the job of the periodic gap backfill).
Writes are idempotent, so a batch written twice (a commit whose answer was lost) stores once.

Into SQLite a write is one hop to a thread of the writer's own, the whole transaction there on
the sync driver: through aiosqlite each statement, fetch, commit and reset is a hop of its own,
a dozen thread wake-ups a write, and on this project's VM the wake-ups cost more than the write.
"""

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from cryptomarket.core.db import Database, create_sync_engine
from cryptomarket.core.metrics import DurationHistogram
from cryptomarket.core.tables import Tables
from cryptomarket.core.tasks import cancel_and_wait
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.instruments.store_interval import StoreInterval
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import PriceRepository, store_ticks, upsert_gap

logger = logging.getLogger("cryptomarket.prices.writer")

OVERFLOW_REASON = "the database was unavailable and the write buffer was full"
# The bound counts index ticks; an instrument's tick, with its fields, holds about ten times the
# memory, so it takes ten times the room: the bound is one on memory whatever the mix.
INSTRUMENT_ROOM = 10


def room_of(tick: Tick) -> int:
    return 1 if tick.fields is None else INSTRUMENT_ROOM


class TickWriter:
    def __init__(
        self,
        database: Database,
        *,
        max_buffer: int = 200_000,
        batch_size: int = 5_000,
        flush_interval: float = 0.5,
        backoff: Backoff | None = None,
        store_interval_ms: int = 0,
    ) -> None:
        self.database = database
        self.store_interval = StoreInterval(store_interval_ms)
        self.max_buffer = max_buffer
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self._buffer: deque[Tick] = deque()
        self._room = 0  # of max_buffer, taken by what is buffered (room_of each tick)
        self._overflow: dict[str, Gap] = {}
        self._gaps: list[Gap] = []
        self._batch_ready = asyncio.Event()
        self._has_work = asyncio.Event()  # something was added since the writer last looked
        self._last_write = -float("inf")  # loop time the last round of writes ended
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True  # the last write went through
        self.written = 0
        self.dropped = 0
        self.failures = 0  # writes the database refused
        self.write_seconds = DurationHistogram()  # successful batch writes, for /metrics
        self._thread: tuple[ThreadPoolExecutor, Engine] | None = None  # SQLite's write path

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def room_used(self) -> int:
        """Of `max_buffer`: one per index tick, INSTRUMENT_ROOM per instrument tick."""
        return self._room

    def add(self, tick: Tick) -> None:
        """Queue a tick; never blocks. Past the bound it is dropped and its range becomes a gap.
        An instrument's update inside an already stored window is not stored (by design)."""
        if not self.store_interval.keep(tick):
            return
        room = room_of(tick)
        if self._room + room > self.max_buffer:
            self.dropped += 1
            gap = self._overflow.get(tick.ticker)
            start = tick.timestamp if gap is None else min(gap.from_ts, tick.timestamp)
            end = tick.timestamp if gap is None else max(gap.to_ts, tick.timestamp)
            self._overflow[tick.ticker] = Gap(tick.ticker, start, end, OVERFLOW_REASON)
            self._has_work.set()
            return
        self._buffer.append(tick)
        self._room += room
        self._has_work.set()
        if len(self._buffer) >= self.batch_size:
            self._batch_ready.set()

    def add_gap(self, gap: Gap) -> None:
        """Queue a gap to record (written with the next batch of ticks)."""
        self._gaps.append(gap)
        self._has_work.set()
        self._batch_ready.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="tick-writer")

    async def stop(self, *, timeout: float = 5.0) -> None:
        """Stop the loop and write what is buffered, as far as the database lets us in `timeout`."""
        task, self._task = self._task, None
        if task is not None:
            try:
                await cancel_and_wait(task)
            except asyncio.CancelledError:  # our own caller gave up on the stop: say what is left
                if self._pending():
                    logger.error("stop cancelled with %d ticks unwritten", len(self._buffer))
                raise
        try:
            async with asyncio.timeout(timeout):
                while self._pending():
                    await self._write_once()
        except Exception as error:  # shutting down: report, do not raise
            logger.error("stopped with %d ticks unwritten: %s", len(self._buffer), _describe(error))
        if self._thread is not None:
            executor, engine = self._thread
            self._thread = None
            executor.submit(engine.dispose)  # after a write still under way, in its thread
            executor.shutdown(wait=False)

    async def flush(self) -> None:
        """Write everything buffered now (raises if the database is down)."""
        while self._pending():
            await self._write_once()

    def _pending(self) -> bool:
        return bool(self._buffer or self._gaps or self._overflow)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_work.wait()
            wait = self._last_write + self.flush_interval - loop.time()
            if wait > 0:  # written lately: gather until the interval is over or a batch is full
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._batch_ready.wait()
            self._has_work.clear()
            self._batch_ready.clear()
            await self._write_pending()
            self._last_write = loop.time()

    async def _write_pending(self) -> None:
        while self._pending():
            was_healthy = self.healthy
            try:
                await self._write_once()
            except Exception as error:  # any database failure: keep and retry
                if was_healthy:
                    logger.error(
                        "database write failed, buffering ticks (%d held): %s",
                        len(self._buffer),
                        _describe(error),
                    )
                await asyncio.sleep(self.backoff.next_delay())
                continue
            if not was_healthy:
                logger.info("database writes resumed (%d ticks still held)", len(self._buffer))
            self.backoff.reset()
            if len(self._buffer) < self.batch_size:
                break

    async def _write_once(self) -> None:
        """Write the head of the buffer and the queued gaps in one transaction."""
        async with self._write_lock:  # `flush` and the loop may both be writing
            started = time.perf_counter()
            try:
                await self._write_head()
            except Exception:
                self.healthy = False
                self.failures += 1
                raise
            self.write_seconds.observe(time.perf_counter() - started)
            self.healthy = True

    async def _write_head(self) -> None:
        batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
        # Gaps go with every batch: written only into an empty buffer, they waited as long as
        # ticks kept coming (for ever, at a steady tick rate) and were lost with the process.
        taken_gaps = len(self._gaps)
        gaps = [*self._gaps, *self._overflow.values()]
        if self.database.dialect == "sqlite":
            executor, engine = self._sqlite_thread()
            loop = asyncio.get_running_loop()
            tables = self.database.tables
            await loop.run_in_executor(executor, _write_sync, engine, tables, batch, gaps)
        else:
            async with self.database.transaction() as connection:
                repository = PriceRepository(connection, self.database.tables)
                await repository.add_ticks(batch)
                for gap in gaps:
                    await repository.add_gap(gap)
        for _ in batch:
            self._room -= room_of(self._buffer.popleft())
        self.written += len(batch)
        if gaps:
            del self._gaps[:taken_gaps]  # gaps queued while this transaction ran stay queued
            for gap in gaps:
                if self._overflow.get(gap.ticker) == gap:
                    del self._overflow[gap.ticker]
            logger.warning("recorded %d gap(s)", len(gaps))

    def _sqlite_thread(self) -> tuple[ThreadPoolExecutor, Engine]:
        if self._thread is None:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tick-writer")
            self._thread = executor, create_sync_engine(self.database.urls.sync_url)
        return self._thread


def _write_sync(engine: Engine, tables: Tables, ticks: Sequence[Tick], gaps: list[Gap]) -> None:
    """One transaction of ticks and gaps on the sync driver (the writer's thread)."""
    with engine.begin() as connection:
        store_ticks(connection, tables, ticks)
        for gap in gaps:
            connection.execute(upsert_gap(tables, engine.dialect.name, gap))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
