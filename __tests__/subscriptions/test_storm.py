"""Concurrent subscribes and cancels of users sharing tickers: the upstream channels end as
exactly the tracked tickers plus the stored subscriptions (issue #11, defect 2)."""

import asyncio
import random
from datetime import UTC, datetime

import httpx

from __tests__.helpers import eventually
from __tests__.service import Service
from cryptomarket.prices.kinds import channel_of
from cryptomarket.users.limits import AttemptLimiter
from cryptomarket.users.repository import UserRepository

USERS = ["alice", "bob", "carol", "dave"]
KEY_OF = {"alice": "alice", "bob": "bob", "carol": "alice", "dave": "bob"}
SHARED = ["eth_usd", "sol_usdc", "ada_usdc"]
ROUNDS = 12


async def signed_in_clients(service: Service) -> dict[str, httpx.AsyncClient]:
    service.runtime.sign_in_limits = AttemptLimiter(burst=len(USERS))
    tokens = [await service.sign_in(user, KEY_OF[user]) for user in USERS]
    return {user: service.client_for(token) for user, token in zip(USERS, tokens, strict=True)}


async def stored_subscriptions(service: Service) -> set[str]:
    tickers: set[str] = set()
    for user in USERS:
        tickers |= set(await service.runtime.subscriptions.subscriptions(user))
    return tickers


def simulator_channels(service: Service) -> set[str]:
    """What the simulator itself has subscribed, over every socket (the ingest's is the only
    one that subscribes)."""
    sessions = service.simulator._state.sessions.values()  # ground truth
    return set().union(*(session.subscriptions for session in sessions))


async def test_a_storm_of_subscribes_and_cancels_leaves_upstream_equal_to_the_store(
    service_on: Service,
) -> None:
    service = service_on
    ingest = service.runtime.ingest
    await ingest.connection.wait_ready()
    clients = await signed_in_clients(service)
    chance = random.Random(11)  # a replayable schedule, not a secret
    statuses: list[int] = []

    async def call(user: str, route: str, ticker: str) -> None:
        response = await clients[user].post(f"/api/v1/market/{user}/{route}/{ticker}")
        statuses.append(response.status_code)

    try:
        for _ in range(ROUNDS):
            calls = []
            for user in USERS:
                for ticker in SHARED:
                    action = chance.choice(["subscribe", "cancel", "cancel twice", "both"])
                    if action in ("subscribe", "both"):
                        calls.append(call(user, "create_order", ticker))
                    if action in ("cancel", "both"):
                        calls.append(call(user, "cancel_order", ticker))
                    if action == "cancel twice":  # the same row removed by two at once
                        calls += [call(user, "cancel_order", ticker) for _ in range(2)]
            chance.shuffle(calls)
            await asyncio.gather(*calls)
            stored = await stored_subscriptions(service)
            wanted = {channel_of(ticker) for ticker in stored | {"btc_usd"}}
            assert ingest.connection.channels == wanted
            assert ingest.tickers == stored | {"btc_usd"}
            async with service.runtime.database.reading() as connection:
                repository = UserRepository(connection, service.runtime.database.tables)
                assert dict(ingest._refs) == await repository.subscribed_tickers()
            await eventually(
                lambda: simulator_channels(service) == wanted,  # noqa: B023  # awaited here
                timeout=5,
                what=f"the simulator subscribed exactly {sorted(wanted)}",
            )
        assert set(statuses) <= {200, 201, 404}, statuses
        assert 404 in statuses  # the second of two racing cancels found nothing to remove
    finally:
        for client in clients.values():
            await client.aclose()


async def test_of_concurrent_cancels_of_one_subscription_only_one_removes_it(
    service_on: Service,
) -> None:
    service = service_on
    clients = await signed_in_clients(service)
    try:
        alice, bob = clients["alice"], clients["bob"]
        assert (await bob.post("/api/v1/market/bob/create_order/eth_usd")).status_code == 201
        for _ in range(5):
            assert (
                await alice.post("/api/v1/market/alice/create_order/eth_usd")
            ).status_code == 201
            answers = await asyncio.gather(
                *(alice.post("/api/v1/market/alice/cancel_order/eth_usd") for _ in range(8))
            )
            removed = [a.json()["removed"] for a in answers if a.status_code == 200]
            assert removed == [["eth_usd"]], [a.text for a in answers]
            assert sorted(a.status_code for a in answers) == [200] + [404] * 7
            # bob still watches it: the channel stays upstream
            assert channel_of("eth_usd") in service.runtime.ingest.connection.channels
    finally:
        for client in clients.values():
            await client.aclose()


async def store(service: Service, user: str, ticker: str, *, subscribed: bool) -> None:
    database = service.runtime.database
    async with database.transaction() as connection:
        repository = UserRepository(connection, database.tables)
        if subscribed:
            await repository.claim(
                user, client_id="c", secret=b"s", account_id=1, profile={}, now=datetime.now(UTC)
            )
            await repository.subscribe(user, ticker, None, datetime.now(UTC))
        else:
            await repository.unsubscribe(user, [ticker])


async def test_watcher_calls_in_any_order_or_repeated_leave_the_channel_as_stored(
    service_on: Service,
) -> None:
    ingest = service_on.runtime.ingest
    await ingest.connection.wait_ready()
    channel = channel_of("eth_usd")

    # A subscribe and a cancel whose calls run in the other order after their transactions.
    await store(service_on, "alice", "eth_usd", subscribed=True)
    await store(service_on, "alice", "eth_usd", subscribed=False)
    await ingest.release("eth_usd")
    await ingest.acquire("eth_usd")
    assert channel not in ingest.connection.channels
    assert channel not in simulator_channels(service_on)

    # A release too many (a cancel counted twice) while another user still watches.
    for user in ("alice", "bob"):
        await store(service_on, user, "eth_usd", subscribed=True)
        await ingest.acquire("eth_usd")
    await store(service_on, "alice", "eth_usd", subscribed=False)
    await ingest.release("eth_usd")
    await ingest.release("eth_usd")
    assert channel in ingest.connection.channels
    assert channel in simulator_channels(service_on)
    assert ingest.tickers == {"btc_usd", "eth_usd"}
