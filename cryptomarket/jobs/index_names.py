"""Refresh the shared list of Deribit's index names (the replicas' ticker check reads it)."""

import json
from typing import Any

from redis import Redis

from cryptomarket.core.config import Settings
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.distributed.cache import (
    INDEX_NAMES_KEY,
    INDEX_NAMES_METHOD,
    INDEX_NAMES_TTL,
    PREFIX,
)
from cryptomarket.jobs.deribit import with_deribit
from cryptomarket.prices.tickers import parse_index_names


def refresh_index_names(settings: Settings, redis: Redis) -> int:
    """Fetch the list from Deribit into the cache; returns how many names it has."""

    async def fetch(pool: DeribitPool) -> Any:
        return await pool.call(INDEX_NAMES_METHOD, {})

    result = with_deribit(settings, fetch)
    names = parse_index_names(result)
    if not names:
        raise ValueError("Deribit answered an empty list of index names")
    redis.set(
        PREFIX + INDEX_NAMES_KEY,
        json.dumps(result),
        px=int(INDEX_NAMES_TTL.total_seconds() * 1000),
    )
    return len(names)
