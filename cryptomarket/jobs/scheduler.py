"""The periodic jobs of embedded mode, in the `serve` process: the same job functions Celery
runs in distributed mode (those that apply without Redis), each in a worker thread on the sync
database path so the event loop never blocks. A failed run is logged; the next one comes anyway.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptomarket.core.config import Settings
from cryptomarket.core.db import create_sync_engine, database_urls
from cryptomarket.core.metrics import record_job
from cryptomarket.core.tables import build_tables
from cryptomarket.jobs import gaps, retention, sessions

logger = logging.getLogger("cryptomarket.jobs")

HOUR = 3600.0


@dataclass(frozen=True)
class Job:
    name: str
    every: float
    run: Callable[[], Awaitable[object]]


class EmbeddedScheduler:
    def __init__(
        self, settings: Settings, *, refresh_index_names: Callable[[], Awaitable[object]]
    ) -> None:
        urls = database_urls(settings)
        self.engine = create_sync_engine(urls.sync_url)
        tables = build_tables(urls.dialect)
        engine = self.engine
        self.jobs = [
            Job(
                "backfill_gaps",
                settings.JOBS_GAP_INTERVAL,
                lambda: asyncio.to_thread(gaps.backfill_gaps, settings, engine, tables),
            ),
            Job(
                "prune_history",
                HOUR,
                lambda: asyncio.to_thread(
                    retention.prune_history, engine, tables, settings.HISTORY_RETENTION_DAYS
                ),
            ),
            Job(
                "purge_sessions",
                HOUR,
                lambda: asyncio.to_thread(sessions.purge_sessions, engine, tables),
            ),
            Job("refresh_index_names", HOUR, refresh_index_names),
        ]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for job in self.jobs:
            self._tasks.append(asyncio.create_task(self._repeat(job), name=f"job-{job.name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self.engine.dispose()

    async def _repeat(self, job: Job) -> None:
        while True:
            await asyncio.sleep(job.every)
            try:
                await job.run()
            except Exception:
                record_job(job.name, ok=False)
                logger.exception("job %s failed; it runs again in %.0f s", job.name, job.every)
            else:
                record_job(job.name, ok=True)
