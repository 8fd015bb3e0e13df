"""Deribit from a sync job: a short-lived pool on an event loop of the job's own.

With REDIS_URL the pool counts its sockets and spends its credits within the deployment's
(`cryptomarket/distributed/deribit_credits.py`), as the API replicas and ingest do.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from cryptomarket.core.config import Settings
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.distributed.connect import async_redis
from cryptomarket.distributed.deribit_credits import deployment_limits
from cryptomarket.distributed.outages import OutageLog

T = TypeVar("T")

JOB_POOL_SIZE = 2


def with_deribit(settings: Settings, work: Callable[[DeribitPool], Awaitable[T]]) -> T:
    """Run `work` with a pool of its own, closed afterwards (no loop is shared across jobs)."""

    async def run() -> T:
        async with job_pool(settings) as pool:
            return await work(pool)

    return asyncio.run(run())


@contextlib.asynccontextmanager
async def job_pool(settings: Settings) -> AsyncIterator[DeribitPool]:
    async with contextlib.AsyncExitStack() as stack:
        budget, gate = CreditBudget(), None
        if settings.REDIS_URL is not None:
            redis = async_redis(settings.REDIS_URL)
            stack.push_async_callback(redis.aclose)
            gate, shared = deployment_limits(
                redis,
                OutageLog("redis"),
                limit=settings.DERIBIT_MAX_CONNECTIONS,
                want=JOB_POOL_SIZE,
            )
            stack.push_async_callback(gate.close)
            budget = CreditBudget(shared=shared)
        pool = DeribitPool(
            settings.DERIBIT_WS_URL,
            size=JOB_POOL_SIZE,
            budget=budget,
            gate=gate,
            heartbeat_interval=settings.DERIBIT_HEARTBEAT_INTERVAL,
            request_timeout=settings.DERIBIT_REQUEST_TIMEOUT,
        )
        stack.push_async_callback(pool.close)  # closed first: its tickets go before the gate
        yield pool
