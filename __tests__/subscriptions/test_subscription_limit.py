"""MAX_SUBSCRIPTIONS_PER_USER: one user id cannot subscribe every ticker Deribit lists (each
instrument is an upstream channel of ten updates a second), not even by racing requests."""

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from __tests__.service import Service, running_service
from cryptomarket.core.errors import TooMany
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.deribit.simulator.indexes import INDEX_NAMES
from cryptomarket.users.repository import UserRepository

LIMIT = 3


@pytest.fixture
async def limited(simulator: Simulator, any_database_url: str) -> AsyncIterator[Service]:
    settings = {"MAX_SUBSCRIPTIONS_PER_USER": LIMIT}
    async with running_service(simulator, any_database_url, **settings) as running:
        yield running


async def test_one_subscription_past_the_limit_is_429_and_stores_nothing(limited: Service) -> None:
    client = limited.client_for(await limited.sign_in("alice"))
    tickers = list(INDEX_NAMES[: LIMIT + 1])
    for ticker in tickers[:LIMIT]:
        assert (await client.get(f"/api/v1/market/alice/create_order/{ticker}")).status_code == 201
    refused = await client.get(f"/api/v1/market/alice/create_order/{tickers[LIMIT]}")
    assert refused.status_code == 429, refused.text
    assert refused.json()["code"] == "too_many_subscriptions"
    assert "MAX_SUBSCRIPTIONS_PER_USER=3" in refused.json()["detail"]
    changed = await client.get(f"/api/v1/market/alice/create_order/{tickers[0]}?timer=5")
    assert changed.status_code == 200  # a timer change of one held is no new subscription
    assert sorted(await limited.runtime.subscriptions.subscriptions("alice")) == sorted(
        tickers[:LIMIT]
    )
    await client.get(f"/api/v1/market/alice/cancel_order/{tickers[1]}")
    again = await client.get(f"/api/v1/market/alice/create_order/{tickers[LIMIT]}")
    assert again.status_code == 201  # room again once one is cancelled
    await client.aclose()


async def test_racing_subscriptions_cannot_pass_the_limit_together(
    simulator: Simulator, any_database_url: str
) -> None:
    # Two processes on one store (replicas), each taking half of the racing requests.
    settings = {"MAX_SUBSCRIPTIONS_PER_USER": LIMIT}
    async with (
        running_service(simulator, any_database_url, **settings) as first,
        running_service(simulator, any_database_url, **settings) as second,
    ):
        clients = [first.client_for(await first.sign_in("alice"))]
        clients.append(second.client_for(await second.sign_in("alice")))
        tickers = list(INDEX_NAMES[:12])
        answers = await asyncio.gather(
            *(
                clients[n % 2].get(f"/api/v1/market/alice/create_order/{ticker}")
                for n, ticker in enumerate(tickers)
            )
        )
        statuses = sorted(answer.status_code for answer in answers)
        assert statuses == [201] * LIMIT + [429] * (len(tickers) - LIMIT)
        assert len(await first.runtime.subscriptions.subscriptions("alice")) == LIMIT
        for client in clients:
            await client.aclose()


async def test_a_subscription_waits_for_one_another_process_has_not_committed(
    limited: Service,
) -> None:
    # Another replica is between its insert and its commit of the user's last allowed ticker:
    # this one must wait for that commit and then count it, not count past it.
    await limited.sign_in("alice")
    service = limited.runtime.subscriptions
    tickers = list(INDEX_NAMES[: LIMIT + 1])
    for ticker in tickers[: LIMIT - 1]:
        await service.subscribe("alice", ticker, None)
    database = limited.runtime.database
    async with database.transaction() as connection:  # the other replica's transaction
        other = UserRepository(connection, database.tables)
        await other.lock_subscriptions("alice")
        await other.subscribe("alice", tickers[LIMIT - 1], None, datetime.now(UTC))
        racing = asyncio.create_task(service.subscribe("alice", tickers[LIMIT], None))
        await asyncio.wait({racing}, timeout=1.0)  # a racer that does not wait is done by now
    with pytest.raises(TooMany):
        await racing
    assert sorted(await service.subscriptions("alice")) == sorted(tickers[:LIMIT])
