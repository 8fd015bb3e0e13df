"""Stream limits per Deribit account: the user ids one key claims share one budget of streams."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from __tests__.databases import fresh_database_url
from __tests__.helpers import eventually
from __tests__.service import KEYS, running_service
from __tests__.sse import open_stream
from cryptomarket.core.errors import TooMany
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.streaming.hub import StreamHub

ALICE_ACCOUNT = 1001  # the simulator's account of the key sim-alice


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database_url(request, request.param, tmp_path) as url:
        yield url


def key_headers(user_id: str, key_of: str) -> dict[str, str]:
    client_id, secret = KEYS[key_of]
    return {"X-User-id": user_id, "X-Client-Id": client_id, "X-Secret-key": secret}


async def test_user_ids_of_one_key_share_the_account_limit(
    simulator: Simulator, database_url: str
) -> None:
    settings = {
        "SSE_MAX_STREAMS_PER_USER": 2,
        "SSE_MAX_STREAMS_PER_ACCOUNT": 3,
        "SSE_MAX_STREAMS": 100,
        "SIGN_IN_BURST": 100,
    }
    async with running_service(simulator, database_url, **settings) as service:
        hub = service.runtime.hub
        alice = service.client_for(await service.sign_in("alice"))
        alice2 = service.client_for(await service.sign_in("alice2", key_of="alice"))
        await service.sign_in("alice3", key_of="alice")  # then used with the key headers
        alice3 = httpx.AsyncClient(
            base_url=service.base_url, headers=key_headers("alice3", "alice"), timeout=10
        )
        bob = service.client_for(await service.sign_in("bob"))
        async with (
            open_stream(alice) as first,
            open_stream(alice2) as second,
            open_stream(alice3) as third,
        ):
            for stream in (first, second, third):
                await stream.until("connected")
            assert hub.streams_per_account() == {ALICE_ACCOUNT: 3}
            # alice2 holds one stream of its two, but the account holds its three.
            for client in (alice2, alice3):
                async with open_stream(client) as refused:
                    assert refused.response.status_code == 429
                    answer = (await refused.response.aread()).decode()
                    assert '"too_many_streams"' in answer
                    assert "SSE_MAX_STREAMS_PER_ACCOUNT=3" in answer
                    assert "per Deribit account" in answer
            # Another Deribit account is not held back by alice's.
            async with open_stream(bob) as b1, open_stream(bob) as b2:
                assert (await b1.until("connected")).data["user_id"] == "bob"
                assert (await b2.until("connected")).data["user_id"] == "bob"
            async with open_stream(alice2) as again:
                assert again.response.status_code == 429  # bob's streams freed none of alice's
        # Closed streams give their slots back, and the account's entry goes with the last.
        await eventually(lambda: hub.open_streams == 0, what="every stream closed")
        assert hub.streams_per_account() == {}
        async with open_stream(alice2) as s1, open_stream(alice2) as s2, open_stream(alice) as s3:
            for stream in (s1, s2, s3):
                assert stream.response.status_code == 200
                await stream.until("connected")
        for client in (alice, alice2, alice3, bob):
            await client.aclose()


def test_closing_a_stream_frees_its_account_slot_at_once() -> None:
    hub = StreamHub(max_streams=100, max_per_user=5, max_per_account=2)
    first = hub.open("a1", 0, account_id=7)
    hub.open("a2", 0, account_id=7)
    with pytest.raises(TooMany, match="SSE_MAX_STREAMS_PER_ACCOUNT=2") as refused:
        hub.open("a3", 0, account_id=7)
    assert refused.value.status_code == 429
    assert hub.user_ids() == ["a1", "a2"]  # the refused open left nothing behind
    hub.open("b1", 0, account_id=8)  # another account opens
    hub.close(first)
    hub.close(first)  # closing twice frees one slot, not two
    assert hub.streams_per_account() == {7: 1, 8: 1}
    hub.open("a3", 0, account_id=7)  # the slot is free at once
    with pytest.raises(TooMany, match="per Deribit account"):
        hub.open("a1", 0, account_id=7)


def test_an_account_is_forgotten_with_its_last_stream() -> None:
    """A week of churn: many accounts opening and closing leave no entry behind."""
    hub = StreamHub(max_streams=10_000, max_per_user=5, max_per_account=3)
    for round_ in range(200):
        streams = [
            hub.open(f"u{round_}-{n}", 0, account_id=round_ * 10 + n % 10) for n in range(30)
        ]
        for stream in streams[::3]:  # dropped too slow, the other path out of the hub
            hub._drop(stream)
        for stream in streams:
            hub.close(stream)
        assert hub.streams_per_account() == {}
    assert hub.open_streams == 0
    legacy = hub.open("old", 0)  # a user stored before accounts were: the per-user bound only
    assert hub.streams_per_account() == {}
    hub.close(legacy)


async def test_a_user_reopening_in_a_loop_gets_429_with_the_wait_and_others_open_freely(
    simulator: Simulator, sqlite_url: str
) -> None:
    settings = {"SSE_OPEN_BURST": 3, "SSE_OPENS_PER_MINUTE": 6, "SIGN_IN_BURST": 100}
    async with running_service(simulator, sqlite_url, **settings) as service:
        alice = service.client_for(await service.sign_in("alice"))
        bob = service.client_for(await service.sign_in("bob"))
        for _ in range(3):  # open and close at once, as a client in a reconnect loop does
            async with open_stream(alice) as stream:
                await stream.until("connected")
        async with open_stream(alice) as refused:
            assert refused.response.status_code == 429
            assert refused.response.headers["Retry-After"] in {"9", "10"}  # 6 a minute
            answer = (await refused.response.aread()).decode()
            assert '"too_many_opens"' in answer and "SSE_OPENS_PER_MINUTE=6" in answer
        async with open_stream(bob) as other:  # bob's budget is his own
            assert (await other.until("connected")).data["user_id"] == "bob"
        for client in (alice, bob):
            await client.aclose()
