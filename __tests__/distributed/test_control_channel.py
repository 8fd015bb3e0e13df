"""The control channel on its own, against a real Redis: it keeps listening whatever fails."""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError

from __tests__.helpers import eventually
from __tests__.servers import RedisServer
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.distributed.control import ControlChannel, SessionEnded, SubscriptionChange
from cryptomarket.distributed.outages import OutageLog


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url, socket_timeout=2, socket_connect_timeout=2)
    yield client
    await client.aclose()


async def test_a_recount_the_store_refuses_does_not_end_the_listening(redis: Redis) -> None:
    # Redis came back before PostgreSQL: the recount of what was missed fails. The replica
    # must go on hearing changes, and recount once the store answers.
    fast = lambda: Backoff(initial=0.05, maximum=0.2)  # noqa: E731
    listener = ControlChannel(redis, OutageLog("redis"), backoff=fast)
    announcer = ControlChannel(redis, OutageLog("redis"))
    heard: list[SubscriptionChange] = []
    recounts: list[bool] = []

    async def on_change(change: SubscriptionChange) -> None:
        heard.append(change)

    async def recount() -> None:
        recounts.append(len(recounts) > 0)
        if len(recounts) == 1:
            raise OperationalError("SELECT", {}, Exception("the database system is starting up"))

    listener.listen(on_change, recount)
    try:
        await eventually(lambda: recounts == [False, True], what="recounted once the store answers")
        await eventually(lambda: listener.listening, what="listening again")
        await announcer.announce(SubscriptionChange("alice", "eth_usd", 0, removed=False))
        await eventually(lambda: len(heard) == 1, what="a change announced after")
    finally:
        await listener.stop()


async def test_an_announcement_that_failed_is_tried_again(redis: Redis) -> None:
    # Only the announcing process's Redis client failed (its pool timed out): the others stay
    # subscribed, so no resync of theirs would make up for the lost message.
    fast = lambda: Backoff(initial=0.05, maximum=0.2)  # noqa: E731
    listener = ControlChannel(redis, OutageLog("redis"))
    announcer = ControlChannel(redis, OutageLog("redis"), backoff=fast)
    ended: list[SessionEnded] = []
    listener.on_session_ended = ended.append

    async def on_change(change: SubscriptionChange) -> None:
        return None

    listener.listen(on_change)
    publish = redis.publish
    failures = 0

    async def failing_once(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures == 0:
            failures += 1
            raise RedisConnectionError("Timeout connecting to server")
        return await publish(*args, **kwargs)

    try:
        await eventually(lambda: listener.listening, what="listening")
        announcer.redis = Redis(connection_pool=redis.connection_pool)
        announcer.redis.publish = failing_once  # type: ignore[method-assign]
        await announcer.announce_session_ended("alice", "a-session-hash")
        await eventually(lambda: len(ended) == 1, what="the sign-out heard at a later try")
        assert ended[0].session == "a-session-hash" and failures == 1
    finally:
        await announcer.stop()
        await listener.stop()
