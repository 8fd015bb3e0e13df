"""Runs and failures of the Celery jobs, counted in Redis so every replica's /metrics shows them.

A worker process is not scraped (its pool children come and go); it counts each task's end in two
Redis hashes, job name -> count, and the API reads them when /metrics is scraped.
"""

import asyncio
import logging

from redis import Redis as SyncRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("cryptomarket.distributed.job_counts")

RUNS = "cryptomarket:jobs:runs"
FAILURES = "cryptomarket:jobs:failures"
READ_TIMEOUT = 1.0  # a scrape must not wait on a Redis outage

Counts = tuple[dict[str, int], dict[str, int]]


def count_job(redis: SyncRedis, name: str, *, ok: bool) -> None:
    """Count one run (and, when it failed, one failure); an outage loses the count, not the job."""
    try:
        with redis.pipeline() as pipeline:
            pipeline.hincrby(RUNS, name, 1)
            if not ok:
                pipeline.hincrby(FAILURES, name, 1)
            pipeline.execute()
    except (RedisError, OSError) as error:
        logger.warning("the run of job %s was not counted: %s", name, type(error).__name__)


async def read_job_counts(redis: Redis) -> Counts:
    """The counts so far; none when Redis does not answer (the scrape still succeeds)."""
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            runs = await redis.hgetall(RUNS)
            failures = await redis.hgetall(FAILURES)
    except (RedisError, OSError, TimeoutError):
        return {}, {}
    return _decoded(runs), _decoded(failures)


def _decoded(raw: dict[bytes | str, bytes | str]) -> dict[str, int]:
    return {
        key.decode() if isinstance(key, bytes) else key: int(value) for key, value in raw.items()
    }
