"""Deribit from a sync job: a short-lived pool on an event loop of the job's own."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cryptomarket.core.config import Settings
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.pool import DeribitPool

T = TypeVar("T")

JOB_POOL_SIZE = 2


def with_deribit(settings: Settings, work: Callable[[DeribitPool], Awaitable[T]]) -> T:
    """Run `work` with a pool of its own, closed afterwards (no loop is shared across jobs)."""

    async def run() -> T:
        pool = DeribitPool(
            settings.DERIBIT_WS_URL,
            size=JOB_POOL_SIZE,
            budget=CreditBudget(),
            heartbeat_interval=settings.DERIBIT_HEARTBEAT_INTERVAL,
            request_timeout=settings.DERIBIT_REQUEST_TIMEOUT,
        )
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(run())
