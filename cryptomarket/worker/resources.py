"""What a worker process's tasks share: the sync engine, the tables and a Redis client.

Made on first use in each process (a forked pool child makes its own; nothing crosses a fork).
"""

import os
from dataclasses import dataclass

from redis import Redis
from sqlalchemy import Engine

from cryptomarket.core.config import Settings
from cryptomarket.core.db import create_sync_engine, database_urls
from cryptomarket.core.tables import Tables, build_tables
from cryptomarket.distributed.connect import sync_redis
from cryptomarket.instruments.store_interval import StoreInterval


@dataclass(frozen=True)
class Resources:
    settings: Settings
    engine: Engine
    tables: Tables
    redis: Redis
    store_interval: StoreInterval  # kept across persist runs: it remembers stored windows


_made: dict[int, Resources] = {}


def resources(settings: Settings) -> Resources:
    pid = os.getpid()
    if pid not in _made:
        urls = database_urls(settings)
        if settings.REDIS_URL is None:
            raise RuntimeError("REDIS_URL is not set")
        _made.clear()
        _made[pid] = Resources(
            settings=settings,
            engine=create_sync_engine(urls.sync_url),
            tables=build_tables(urls.dialect),
            redis=sync_redis(settings.REDIS_URL),
            store_interval=StoreInterval(settings.INSTRUMENT_STORE_INTERVAL_MS),
        )
    return _made[pid]
