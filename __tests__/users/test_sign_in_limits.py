"""Sign-in limits (issue #15, defects 4 and 1): an attacker spends only their own budget, on
every replica alike, and one Deribit account claims a bounded number of user ids.

The server trusts X-Forwarded-For from 127.0.0.1 (uvicorn's default, as it trusts nginx in
production), so a request with one comes from that client address.
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from __tests__.databases import fresh_database_url
from __tests__.helpers import eventually
from __tests__.servers import RedisServer
from __tests__.service import KEYS, Service, running_service
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.users.limits import address_key

MALLORY = {"X-Forwarded-For": "203.0.113.66"}


def body(user_id: str, key_of: str, secret: str | None = None) -> dict[str, str]:
    client_id, right = KEYS[key_of]
    return {"user_id": user_id, "client_id": client_id, "client_secret": secret or right}


async def sign_in(client: httpx.AsyncClient, json: dict[str, str], **headers: str) -> int:
    response = await client.post("/api/v1/sessions", json=json, headers=headers)
    return response.status_code


async def test_wrong_secrets_for_alices_client_id_do_not_lock_alice_out(service: Service) -> None:
    before = service.simulator.calls["public/auth"]
    flood = [
        await sign_in(service.client, body("mallory", "alice", "guess"), **MALLORY)
        for _ in range(12)
    ]
    assert flood[:5] == [401] * 5
    assert set(flood[5:]) == {429}
    assert service.simulator.calls["public/auth"] - before == 5
    # Alice, from her own address, gets in at once while the flooder is refused.
    assert await sign_in(service.client, body("alice", "alice")) == 201
    refused = await service.client.post(
        "/api/v1/sessions", json=body("mallory", "alice", "guess"), headers=MALLORY
    )
    assert refused.status_code == 429 and refused.json()["code"] == "too_many_attempts"
    # When to come back: the seconds until the address's bucket (5 a minute) has a token.
    assert 1 <= int(refused.headers["Retry-After"]) <= 13


async def test_refused_secrets_are_counted_per_address_and_key(
    simulator: Simulator, sqlite_url: str
) -> None:
    """An address allowed many attempts (a NAT) still gets only five refusals a key."""
    async with running_service(simulator, sqlite_url, SIGN_IN_BURST=50) as service:
        flood = [
            await sign_in(service.client, body("mallory", "alice", "guess"), **MALLORY)
            for _ in range(8)
        ]
        assert flood == [401] * 5 + [429] * 3
        # The same address may still sign in with another key, and Alice from hers.
        assert await sign_in(service.client, body("bob", "bob"), **MALLORY) == 201
        assert await sign_in(service.client, body("alice", "alice")) == 201


def test_an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_the_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_key("not an address") == "not an address"


@pytest.fixture
async def replicas(
    simulator: Simulator, sqlite_url: str, redis_server: RedisServer
) -> AsyncIterator[tuple[Service, Service]]:
    async with AsyncExitStack() as stack:
        pair = [
            await stack.enter_async_context(
                running_service(
                    simulator,
                    sqlite_url,
                    REDIS_URL=redis_server.url,
                    SIGN_IN_BURST=4,
                    SIGN_INS_PER_MINUTE=1,
                )
            )
            for _ in range(2)
        ]
        yield pair[0], pair[1]


async def test_two_replicas_share_one_budget_per_address(
    replicas: tuple[Service, Service], redis_server: RedisServer
) -> None:
    a, b = replicas
    statuses = []
    for n in range(10):  # another client id each time: only the address's budget counts
        replica = (a, b)[n % 2]
        json = {"user_id": "mallory", "client_id": f"guess-{n}", "client_secret": "x"}
        statuses.append(await sign_in(replica.client, json, **MALLORY))
    assert statuses[:4] == [401] * 4  # one budget of 4, not 4 on each replica
    assert set(statuses[4:]) == {429}
    # Alice is another address: she signs in through either replica.
    assert await sign_in(a.client, body("alice", "alice")) == 201
    assert await sign_in(b.client, body("alice", "alice")) == 201

    # Redis down: each replica limits on its own, and sign-in still works.
    await asyncio.to_thread(redis_server.stop)
    try:
        assert await sign_in(b.client, body("alice", "alice")) == 201
        assert b.runtime.redis_outages.down
    finally:
        await asyncio.to_thread(redis_server.start)
    await eventually(lambda: b.runtime.redis_bus.connected, timeout=15, what="bus back")


async def test_replicas_racing_for_the_last_attempts_never_hand_out_more(
    replicas: tuple[Service, Service],
) -> None:
    """The shared bucket is spent atomically in Redis: 12 attempts at once over two replicas
    from one address get exactly the burst of 4 through, not 4 per replica."""
    a, b = replicas
    racer = {"X-Forwarded-For": "198.51.100.23"}
    statuses = await asyncio.gather(
        *(
            sign_in(
                (a, b)[n % 2].client,
                {"user_id": "racer", "client_id": f"race-{n}", "client_secret": "x"},
                **racer,
            )
            for n in range(12)
        )
    )
    assert sorted(statuses) == [401] * 4 + [429] * 8


async def person_rows(service: Service) -> int:
    database = service.runtime.database
    async with database.reading() as connection:
        result = await connection.execute(select(func.count()).select_from(database.tables.person))
        return int(result.scalar() or 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database_url(request, request.param, tmp_path) as url:
        yield url


async def test_one_deribit_account_claims_at_most_max_user_ids(
    simulator: Simulator, database_url: str
) -> None:
    settings = {"MAX_USER_IDS_PER_ACCOUNT": 3, "SIGN_IN_BURST": 100}
    async with running_service(simulator, database_url, **settings) as service:
        for user_id in ("a1", "a2", "a3"):
            assert await sign_in(service.client, body(user_id, "alice")) == 201
        refused = await service.client.post("/api/v1/sessions", json=body("a4", "alice"))
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "too_many_user_ids"
        assert "Retry-After" not in refused.headers  # waiting does not help: another id does
        detail = refused.json()["detail"]
        assert "MAX_USER_IDS_PER_ACCOUNT=3" in detail and "a1, a2, a3" in detail
        assert await sign_in(service.client, body("a2", "alice")) == 201  # its own ids: fine
        assert await sign_in(service.client, body("b1", "bob")) == 201  # another account
        assert await person_rows(service) == 4

        # Many new ids at once, as an alias flood would send them: none gets past the limit.
        async with running_service(simulator, database_url, **settings) as other_replica:
            clients = (service.client, other_replica.client)
            racing = await asyncio.gather(
                *(sign_in(clients[n % 2], body(f"b{n + 2}", "bob")) for n in range(8))
            )
        assert sorted(racing) == [201, 201] + [429] * 6
        assert await person_rows(service) == 6
