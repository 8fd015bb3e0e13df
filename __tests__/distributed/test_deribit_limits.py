"""Deribit's limits held by the deployment, not per process (issue #15, defect 5).

Several pools stand for the API replicas, ingest and jobs of one deployment: they share one
Redis and call one simulator from one address, which refuses handshakes past its per-IP limit
(HTTP 429) and answers 10028 when the address's credits run out, as Deribit does.
"""

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from __tests__.helpers import eventually, eventually_async
from __tests__.servers import RedisServer
from cryptomarket.deribit.credits import CreditBudget, CreditLimits
from cryptomarket.deribit.errors import TooManyRequests
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.distributed.connect import async_redis
from cryptomarket.distributed.deribit_credits import SharedCredits
from cryptomarket.distributed.deribit_sockets import DeploymentSockets
from cryptomarket.distributed.outages import OutageLog

LIMIT = 6  # the simulator's connections per address, and the deployment's limit
TTL, RENEW = 1.0, 0.1
StartSimulator = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    await redis.flushdb()  # no other test's processes in the counts
    yield redis
    await redis.aclose()


@pytest.fixture
async def processes(client: Redis) -> AsyncIterator[Callable[..., DeploymentSockets]]:
    made: list[DeploymentSockets] = []

    def make(want: int = 5) -> DeploymentSockets:
        made.append(DeploymentSockets(client, limit=LIMIT, want=want, ttl=TTL, renew_every=RENEW))
        return made[-1]

    yield make
    for sockets in made:
        await sockets.close()


# Cheap calls: the socket tests make many, and are not about credits.
CHEAP = CreditLimits(cost=10, cap=50_000, refill_per_second=10_000)
# Two processes alone could spend 2 x 4,000 credits at once where Deribit has 6,000.
FAST = CreditLimits(cost=500, cap=6_000, refill_per_second=10_000)
MARGIN = 2_000  # half for priority calls, half for 100 ms of bunching at FAST's rate


@pytest.fixture
async def pools(client: Redis) -> AsyncIterator[Callable[..., DeribitPool]]:
    """Pools of one deployment: `pools(url, limits=..., gate=..., size=...)`."""
    made: list[DeribitPool] = []

    def make(url: str, limits: CreditLimits = CHEAP, **options: Any) -> DeribitPool:
        shared = SharedCredits(client, OutageLog("redis"), default=limits, margin=MARGIN)
        budget = CreditBudget(default=limits, margin=MARGIN, max_wait=30, shared=shared)
        options = {"heartbeat_interval": 0.5, "request_timeout": 5, **options}
        made.append(DeribitPool(url, budget=budget, **options))
        return made[-1]

    yield make
    for pool in made:
        await pool.close()


async def busy(pool: DeribitPool, calls: int = 40, rounds: int = 3) -> None:
    """Enough calls at once to make the pool open every socket it may."""
    for _ in range(rounds):
        await asyncio.gather(*(pool.call("public/get_time") for _ in range(calls)))


async def test_three_busy_processes_never_open_more_sockets_than_the_deployment_may(
    simulator_factory: StartSimulator,
    processes: Callable[..., DeploymentSockets],
    pools: Callable[..., DeribitPool],
) -> None:
    simulator = await simulator_factory(max_connections_per_ip=LIMIT, default_limits=CHEAP)
    deployment = [pools(simulator.url, size=5, gate=processes(want=5)) for _ in range(3)]
    await asyncio.gather(*(busy(pool) for pool in deployment))  # 15 sockets wanted
    assert simulator.refused_over_limit == 0
    assert sum(pool.open_connections for pool in deployment) <= LIMIT
    assert all(pool.open_connections >= 1 for pool in deployment)


async def test_a_newcomer_gets_sockets_given_back_and_a_leaver_gives_its_share_back(
    simulator_factory: StartSimulator,
    processes: Callable[..., DeploymentSockets],
    pools: Callable[..., DeribitPool],
) -> None:
    simulator = await simulator_factory(max_connections_per_ip=LIMIT, default_limits=CHEAP)
    first_gate = processes(want=LIMIT)
    first = pools(simulator.url, size=LIMIT, gate=first_gate)
    await busy(first)
    assert first.open_connections == LIMIT  # alone, it may hold them all

    second_gate = processes(want=LIMIT)
    second = pools(simulator.url, size=LIMIT, gate=second_gate)
    assert isinstance(await second.call("public/get_time"), int)  # the first gave one back
    await eventually(lambda: first.open_connections <= LIMIT // 2, what="the first's share")
    await busy(second)
    assert second.open_connections <= LIMIT // 2
    assert simulator.refused_over_limit == 0

    await second.close()
    await second_gate.close()
    await eventually(lambda: first_gate.share == LIMIT, what="the leaver's share back")

    async def grown() -> bool:
        await busy(first, rounds=1)
        return first.open_connections == LIMIT

    await eventually_async(grown, what="the first to grow to the whole deployment again")
    assert simulator.refused_over_limit == 0


async def test_the_tickets_of_a_process_that_died_expire(
    processes: Callable[..., DeploymentSockets],
) -> None:
    dead = processes(want=LIMIT)
    assert all([await dead.try_open() for _ in range(LIMIT)])
    assert dead._task is not None
    dead._task.cancel()  # it stops renewing, as a killed process does; it never leaves

    alive = processes(want=LIMIT)
    assert await alive.try_open() is None  # the deployment is full
    loop = asyncio.get_running_loop()
    died_at = loop.time()
    while await alive.try_open() is None:  # noqa: ASYNC110  # the expiry has no event to await
        await asyncio.sleep(0.05)
    assert loop.time() - died_at >= TTL * 0.5  # not before the dead one's tickets ran out


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_while_redis_is_away_a_process_keeps_to_its_last_share() -> None:
    away = async_redis(f"redis://127.0.0.1:{closed_port()}/0")
    sockets = DeploymentSockets(away, limit=LIMIT, want=4, ttl=TTL, renew_every=RENEW)
    try:
        assert await sockets.try_open() is not None  # a process that never heard: one socket
        assert await sockets.try_open() is None
        sockets.share = 3  # what it last heard
        assert await sockets.try_open() is not None
        assert await sockets.try_open() is not None
        assert await sockets.try_open() is None
    finally:
        await sockets.close()
        await away.aclose()


async def test_two_processes_spending_at_once_never_run_deribits_credits_dry(
    simulator_factory: StartSimulator, pools: Callable[..., DeribitPool]
) -> None:
    simulator = await simulator_factory(default_limits=FAST)
    deployment = [pools(simulator.url, limits=FAST, size=3, heartbeat_interval=2) for _ in range(2)]
    await asyncio.gather(*(busy(pool, calls=10) for pool in deployment))
    assert simulator.errors[TooManyRequests.code] == 0


async def test_while_redis_is_away_each_process_spends_its_part_of_the_credits() -> None:
    away = async_redis(f"redis://127.0.0.1:{closed_port()}/0")
    limits = CreditLimits(cost=500, cap=5_000, refill_per_second=1)
    shared = SharedCredits(
        away, OutageLog("redis"), processes=lambda: 2, default=limits, margin=1_000
    )
    try:
        assert [await shared.take("default", 500) for _ in range(4)] == [0.0] * 4
        assert await shared.take("default", 500) > 0  # half of the 4,000 credits is spent
    finally:
        await away.aclose()
