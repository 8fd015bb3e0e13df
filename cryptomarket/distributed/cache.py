"""The shared cache on Redis: JSON values with a TTL. Redis down means a miss, never an error."""

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cryptomarket.distributed.outages import OutageLog

logger = logging.getLogger("cryptomarket.distributed.cache")

PREFIX = "cryptomarket:cache:"
INDEX_NAMES_METHOD = "public/get_index_price_names"

Call = Callable[..., Awaitable[Any]]


INDEX_NAMES_KEY = "index-names"
INDEX_NAMES_TTL = timedelta(hours=24)  # the refresh job renews it every hour


class RedisCache:
    def __init__(self, redis: Redis, outages: OutageLog) -> None:
        self.redis = redis
        self.outages = outages

    async def get(self, key: str) -> Any | None:
        try:
            raw = await self.redis.get(PREFIX + key)
        except (RedisError, OSError) as error:
            self._failed("read", key, error)
            return None
        self.outages.succeeded()
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    async def set(self, key: str, value: Any, ttl: timedelta) -> None:
        try:
            await self.redis.set(
                PREFIX + key, json.dumps(value), px=int(ttl.total_seconds() * 1000)
            )
        except (RedisError, OSError) as error:
            self._failed("write", key, error)
            return
        self.outages.succeeded()

    async def delete(self, key: str) -> None:
        try:
            await self.redis.delete(PREFIX + key)
        except (RedisError, OSError) as error:
            self._failed("delete", key, error)

    def _failed(self, what: str, key: str, error: BaseException) -> None:
        if not self.outages.down:
            logger.warning(
                "cache %s of %s failed: %s",
                what,
                key.split(":", maxsplit=1)[0],
                type(error).__name__,
            )
        self.outages.failed(error)


def shared_index_names(call: Call, cache: RedisCache) -> Call:
    """A Deribit call function whose `public/get_index_price_names` answers come from the
    shared cache when it has them (every replica and the refresh job share one list)."""

    async def cached_call(method: str, params: dict[str, Any] | None = None) -> Any:
        if method != INDEX_NAMES_METHOD:
            return await call(method, params)
        names = await cache.get(INDEX_NAMES_KEY)
        if isinstance(names, list) and names:
            return names
        result = await call(method, params)
        if result:
            await cache.set(INDEX_NAMES_KEY, result, INDEX_NAMES_TTL)
        return result

    return cached_call
