"""One way to open Redis: bounded timeouts, so a dead server is noticed instead of waited on."""

from redis import Redis as SyncRedis
from redis.asyncio import Redis

SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
HEALTH_CHECK_INTERVAL = 10


def async_redis(url: str) -> Redis:
    """An asyncio client for the API and ingest processes (password and rediss:// URLs work)."""
    return Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )


def sync_redis(url: str) -> SyncRedis:
    """A blocking client for the Celery jobs."""
    return SyncRedis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
    )
