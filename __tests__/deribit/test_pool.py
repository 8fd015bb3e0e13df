"""The connection pool against a running simulator, over real sockets."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from __tests__.helpers import eventually
from __tests__.simulated import sim_control
from cryptomarket.deribit.auth import Credentials
from cryptomarket.deribit.credits import DEFAULT_LIMITS, CreditBudget, CreditLimits
from cryptomarket.deribit.errors import InvalidCredentials, LoginOverLimit
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.deribit.simulator import Simulator, SimulatorConfig

ALICE = Credentials("sim-alice", "sim-alice-secret")


@pytest.fixture
async def pool(simulator: Simulator) -> AsyncIterator[DeribitPool]:
    pool = DeribitPool(simulator.url, size=3, heartbeat_interval=0.5, request_timeout=5)
    yield pool
    await pool.close()


async def test_connections_open_lazily_and_spread_the_load(
    pool: DeribitPool, simulator: Simulator
) -> None:
    assert pool.open_connections == 0
    assert isinstance(await pool.call("public/get_time"), int)
    assert pool.open_connections == 1
    results = await asyncio.gather(*(pool.call("public/get_time") for _ in range(30)))
    assert len(results) == 30
    assert pool.open_connections == 3  # busy: grew to its size, and no further
    await eventually(lambda: simulator.open_connections == 3, what="three sockets")


async def test_a_call_survives_a_dropped_socket(pool: DeribitPool, simulator: Simulator) -> None:
    await pool.call("public/get_time")
    simulator_control = DeribitPool(simulator.url, size=1)
    try:
        assert await simulator_control.call("sim/drop_connections", {}) == "ok"
    finally:
        await simulator_control.close()
    price = await pool.call("public/get_index_price", {"index_name": "eth_usd"})
    assert price["index_price"] > 0


async def test_authenticated_checkout_is_exclusive_and_closed_after(
    pool: DeribitPool, simulator: Simulator
) -> None:
    async with pool.authenticated(ALICE) as connection:
        assert connection.token is not None
        summary = await connection.call("private/get_account_summary", {"currency": "BTC"})
        assert summary["currency"] == "BTC"
        await asyncio.gather(*(pool.call("public/get_time") for _ in range(10)))
        assert simulator.calls["public/auth"] == 1  # nobody else authenticated on it
    assert connection.closed
    assert pool.open_connections <= 3


async def test_a_full_pool_hands_a_public_connection_to_a_checkout(simulator: Simulator) -> None:
    pool = DeribitPool(simulator.url, size=1, heartbeat_interval=0.5, request_timeout=5)
    try:
        await pool.call("public/get_time")
        async with pool.authenticated(ALICE) as connection:
            await connection.call("private/get_account_summaries", {})
            assert pool.open_connections == 1
        assert await pool.call("public/get_time")  # a fresh public socket replaces it
        assert pool.open_connections == 1
    finally:
        await pool.close()


async def test_wrong_credentials_raise_once_through_the_pool(
    pool: DeribitPool, simulator: Simulator
) -> None:
    with pytest.raises(InvalidCredentials):
        async with pool.authenticated(Credentials("sim-bob", "guess")):
            pytest.fail("a refused key must not yield a connection")
    assert simulator.calls["public/auth"] == 1
    assert pool.open_connections == 0


async def test_a_burst_of_2000_requests_never_meets_10028(simulator_factory) -> None:  # type: ignore[no-untyped-def]
    # Deribit's cost and cap; the refill runs four times faster on both sides so the burst takes
    # about 25 s instead of 95 s. The arithmetic that keeps the client under the server's limit is
    # the same at any refill rate.
    fast = CreditLimits(
        DEFAULT_LIMITS.cost, DEFAULT_LIMITS.cap, DEFAULT_LIMITS.refill_per_second * 4
    )
    simulator = await simulator_factory(default_limits=fast)
    budget = CreditBudget(default=fast, max_wait=120)
    pool = DeribitPool(
        simulator.url, size=10, budget=budget, heartbeat_interval=2, request_timeout=60
    )
    try:
        results = await asyncio.gather(
            *(pool.call("public/get_index_price", {"index_name": "btc_usd"}) for _ in range(2000))
        )
    finally:
        await pool.close()
    assert len(results) == 2000
    assert all(result["index_price"] > 0 for result in results)
    assert simulator.errors[10028] == 0
    assert simulator.calls["public/get_index_price"] == 2000
    assert pool.open_connections == 0


def test_the_default_simulator_uses_deribits_numbers() -> None:
    config = SimulatorConfig()
    assert (config.default_limits.cost, config.default_limits.cap) == (500, 50_000)
    assert config.default_limits.refill_per_second == 10_000
    assert config.subscribe_limits.cost == 3_000


@pytest.mark.parametrize("connected_first", [False, True])
async def test_a_throttled_login_is_answered_once_on_a_new_or_a_handed_over_socket(
    simulator: Simulator, connected_first: bool
) -> None:
    """12003 login_over_limit, whether the checkout opens a socket (auth in its set-up) or takes
    over an open public one (auth at once): one public/auth, one error, no retries."""
    pool = DeribitPool(simulator.url, size=1, heartbeat_interval=0.5, request_timeout=5)
    try:
        if connected_first:
            await pool.call("public/get_time")  # the only slot: the checkout takes it over
        await sim_control(
            simulator,
            ("sim/fail_requests", {"code": 12003, "seconds": 60, "methods": ["public/auth"]}),
        )
        with pytest.raises(LoginOverLimit):
            async with pool.authenticated(ALICE):
                pytest.fail("a refused key gave a connection")
        assert simulator.calls["public/auth"] == 1
        assert isinstance(await pool.call("public/get_time"), int)  # the pool carries on
    finally:
        await pool.close()
