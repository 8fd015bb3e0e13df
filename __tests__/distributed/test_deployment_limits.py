"""A whole deployment stays within Deribit's limits per address (issue #15, defect 5).

Three API replicas, the ingest leader and a job's pool, all in distributed mode on one Redis,
against a simulator that allows only LIMIT connections from an address (refusing the next
handshake with HTTP 429, as Deribit does past 32) and enforces Deribit's credits. A burst of
sign-ins on every replica at once, each on a socket of its own, asks for far more sockets than
that and more credits than Deribit's burst; every sign-in succeeds, and the simulator never
refuses a handshake and never answers 10028.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from redis.asyncio import Redis

from __tests__.app_server import app_settings
from __tests__.helpers import eventually_async
from __tests__.servers import RedisServer
from __tests__.service import running_service
from cryptomarket.deribit.errors import TooManyRequests
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.distributed.ingest_leader import LEADER_KEY, run_ingest
from cryptomarket.jobs.deribit import job_pool

pytestmark = pytest.mark.timeout(120)

LIMIT = 8
SIGN_INS_PER_REPLICA = 8
DEPLOYMENT = {
    "DERIBIT_MAX_CONNECTIONS": LIMIT,
    "DERIBIT_POOL_SIZE": 10,  # three replicas alone would want 30
    "SIGN_IN_BURST": 10_000,
    "SIGN_INS_PER_MINUTE": 100_000,
    "MAX_USER_IDS_PER_ACCOUNT": 10_000,
}


async def test_replicas_ingest_and_a_job_never_pass_deribits_limits_together(
    simulator_factory: Callable[..., Awaitable[Simulator]],
    redis_server: RedisServer,
    sqlite_url: str,
) -> None:
    simulator = await simulator_factory(max_connections_per_ip=LIMIT)
    client = Redis.from_url(redis_server.url)
    await client.flushdb()  # no other test's processes in the counts
    settings = dict(DEPLOYMENT, REDIS_URL=redis_server.url)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(client.aclose)
        replicas = [
            await stack.enter_async_context(running_service(simulator, sqlite_url, **settings))
            for _ in range(3)
        ]
        ingest_settings = app_settings(
            DATABASE_URL=sqlite_url, DERIBIT_WS_URL=simulator.url, **settings
        )
        ingest = asyncio.create_task(run_ingest(ingest_settings))
        stack.push_async_callback(stop, ingest)

        async def leading() -> bool:
            return bool(await client.exists(LEADER_KEY)) and simulator.calls["public/subscribe"] > 0

        await eventually_async(leading, what="the ingest leader subscribed")
        job = await stack.enter_async_context(job_pool(ingest_settings))

        async def job_calls() -> None:
            for _ in range(20):
                await job.call("public/get_index_price_names")

        sign_ins = [
            replica.sign_in(f"user-{n}-{i}", key_of="alice")
            for n, replica in enumerate(replicas)
            for i in range(SIGN_INS_PER_REPLICA)
        ]
        await asyncio.gather(job_calls(), *sign_ins)

    assert simulator.refused_over_limit == 0
    assert simulator.errors[TooManyRequests.code] == 0


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
