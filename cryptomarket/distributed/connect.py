"""One way to open Redis: bounded timeouts, so a dead server is noticed instead of waited on.

And two guards for the loops that read Redis forever: redis-py's own timeouts (Python 3.11's
asyncio.timeout) can turn a cancellation into a Redis error or a timed-out read, and the loop
would go on as if nothing had been asked of it.
"""

import asyncio
from collections.abc import Sequence

from redis import Redis as SyncRedis
from redis.asyncio import BlockingConnectionPool, Redis

SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
HEALTH_CHECK_INTERVAL = 10
# Connections of one process. After a restart thousands of streams open at once, each asking
# Redis (the opens' rate limits); past its pool a plain pool raises instead of waiting, which
# turned every burst into "Redis is away" (limits per replica for a while). This one queues the
# askers for a connection, up to POOL_WAIT, and keeps Redis's own client count bounded.
POOL_SIZE = 32
POOL_WAIT = SOCKET_TIMEOUT


def async_redis(url: str) -> Redis:
    """An asyncio client for the API and ingest processes (password and rediss:// URLs work)."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=POOL_WAIT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )
    return Redis.from_pool(pool)  # the client closes its pool with it


def sync_redis(url: str) -> SyncRedis:
    """A blocking client for the Celery jobs."""
    return SyncRedis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )


def raise_if_cancelled() -> None:
    """Call where a loop has caught a Redis error or a read timed out."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_for_sure(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel and await the tasks, cancelling again any that swallowed it."""
    while unfinished := [task for task in tasks if not task.done()]:
        for task in unfinished:
            task.cancel()
        await asyncio.wait(unfinished, timeout=1.0)
    await asyncio.gather(*tasks, return_exceptions=True)
