"""Open streams end with their session: expired, signed out while the control channel was away,
or opened with key headers that no longer match the stored key."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from __tests__.helpers import eventually
from __tests__.servers import RedisServer
from __tests__.service import KEYS, Service, running_service
from __tests__.sse import open_stream
from cryptomarket.core.db import Database
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.streaming.sessions import RecentlySignedOut
from cryptomarket.users.service import token_hash

RECHECK = 0.5  # seconds between re-checks, in these tests
BOUND = RECHECK + 3.0  # a stream whose session ended is gone within this


@pytest.fixture
async def service(simulator: Simulator, sqlite_url: str) -> AsyncIterator[Service]:
    async with running_service(simulator, sqlite_url, SSE_SESSION_RECHECK=RECHECK) as running:
        yield running


async def execute(service: Service, statement: object) -> None:
    database = Database(service.settings.DATABASE_URL)
    try:
        async with database.transaction() as connection:
            await connection.execute(statement)  # type: ignore[call-overload]
    finally:
        await database.dispose()


async def test_a_streams_session_expiring_ends_the_stream_within_the_bound(
    service: Service,
) -> None:
    expiring = await service.sign_in("alice")
    other = await service.sign_in("alice")  # another session of the same user streams on
    async with (
        service.client_for(expiring) as client,
        service.client_for(other) as other_client,
        open_stream(client) as stream,
        open_stream(other_client) as kept,
    ):
        await stream.until("connected")
        await kept.until("connected")
        sessions = Database(service.settings.DATABASE_URL).tables.sessions
        await execute(
            service,
            update(sessions)
            .where(sessions.c.token_hash == token_hash(expiring))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)),
        )
        ended = await stream.until("session_ended", timeout=BOUND)
        assert ended.data == {"reason": "expired"}
        with pytest.raises(EOFError):  # then the response ends
            await stream.next_event()
        assert len(service.runtime.hub.streams_of("alice")) == 1
        assert (await kept.until("status")).event == "status"  # still streaming


async def test_a_key_header_stream_ends_when_the_stored_key_changes(service: Service) -> None:
    await service.sign_in("alice")
    client_id, secret = KEYS["alice"]
    headers = {"X-User-id": "alice", "X-Client-Id": client_id, "X-Secret-key": secret}
    async with (
        httpx.AsyncClient(base_url=service.base_url, headers=headers) as client,
        open_stream(client) as stream,
    ):
        await stream.until("connected")
        person = Database(service.settings.DATABASE_URL).tables.person
        await stream.events_for(2 * RECHECK)  # re-checked meanwhile: the key still matches
        assert len(service.runtime.hub.streams_of("alice")) == 1
        await execute(
            service,
            update(person).where(person.c.user_id == "alice").values(client_id="another-key"),
        )
        ended = await stream.until("session_ended", timeout=BOUND)
        assert ended.data == {"reason": "key_changed"}


async def test_a_sign_out_made_while_the_control_channel_is_away_ends_the_stream_on_its_return(
    simulator: Simulator, sqlite_url: str, redis_server: RedisServer
) -> None:
    async with AsyncExitStack() as stack:
        a, b = [  # no periodic re-check within the test: only the channel's return can end it
            await stack.enter_async_context(
                running_service(
                    simulator, sqlite_url, REDIS_URL=redis_server.url, SSE_SESSION_RECHECK=3600
                )
            )
            for _ in range(2)
        ]
        for replica in (a, b):
            await eventually(lambda r=replica: r.runtime.control.listening, what="listening")
        token = await a.sign_in("bob")
        on_a = await stack.enter_async_context(a.client_for(token))
        on_b = await stack.enter_async_context(b.client_for(token))
        stream = await stack.enter_async_context(open_stream(on_b))
        await stream.until("connected")
        redis_server.stop()
        try:
            await eventually(lambda: not b.runtime.control.listening, what="B's channel lost")
            assert (await on_a.delete("/api/v1/sessions/current")).status_code == 204
            assert len(b.runtime.hub.streams_of("bob")) == 1  # B heard nothing
        finally:
            redis_server.start()
        ended = await stream.until("session_ended", timeout=15)
        assert ended.data == {"reason": "signed_out"}
        assert b.runtime.hub.streams_of("bob") == frozenset()


def test_signed_out_sessions_are_kept_a_while_and_a_bounded_number() -> None:
    now = [0.0]
    kept = RecentlySignedOut(keep_seconds=300, keep=1_000, clock=lambda: now[0])
    kept.add("session-a")
    now[0] = 299.0
    assert "session-a" in kept
    now[0] = 301.0
    assert "session-a" not in kept
    for n in range(5_000):  # a sign-out storm: the oldest go first
        kept.add(f"session-{n}")
    assert len(kept) == 1_000
    assert "session-4999" in kept and "session-3999" not in kept
