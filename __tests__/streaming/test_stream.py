"""The SSE stream over a real uvicorn server, read by a strict event-stream parser."""

import asyncio
import contextlib
import gc
import itertools
import logging
import socket

import httpx
import pytest

from __tests__.helpers import eventually
from __tests__.service import Service, running_service
from __tests__.simulated import sim_control
from __tests__.sse import Event, open_stream
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.prices.models import Gap
from cryptomarket.streaming.limits import OpenLimiter
from cryptomarket.streaming.stream import Stream as HubStream


def prices(events: list[Event], ticker: str | None = None) -> list[int]:
    return [
        e.data["timestamp"]
        for e in events
        if e.event == "price" and (ticker is None or e.data["ticker"] == ticker)
    ]


def consecutive(simulator: Simulator, ticker: str, stamps: list[int]) -> bool:
    """The stamps are exactly the simulator's ticks from the first to the last, none missing."""
    sent = [ts for ts, _ in simulator.history(ticker) if stamps[0] <= ts <= stamps[-1]]
    return sent == stamps


async def subscribe(client: httpx.AsyncClient, user: str, ticker: str, timer: int | None) -> None:
    params = {} if timer is None else {"timer": timer}
    response = await client.get(f"/api/v1/market/{user}/create_order/{ticker}", params=params)
    assert response.status_code in (200, 201), response.text


async def test_two_users_stream_their_own_tickers(service: Service) -> None:
    alice = service.client_for(await service.sign_in("alice"))
    bob = service.client_for(await service.sign_in("bob"))
    await subscribe(alice, "alice", "btc_usd", 0)
    await subscribe(bob, "bob", "eth_usd", 0)
    async with open_stream(alice) as a, open_stream(bob) as b:
        assert a.response.status_code == b.response.status_code == 200
        assert a.response.headers["content-type"].startswith("text/event-stream")
        connected = await a.next_event()
        assert connected.event == "connected"
        assert connected.data["user_id"] == "alice"
        assert connected.data["subscriptions"] == [{"ticker": "btc_usd", "timer": 0}]
        assert connected.data["timer"] == 60
        assert a.parser.retry_ms == 3000
        assert (await b.next_event()).data["user_id"] == "bob"

        first = await a.until("price")
        assert first.id == f"btc_usd:{first.data['timestamp']}"
        assert first.data["datetime"].endswith("Z")
        seen = [first, *(await a.events_for(1.0))]
        assert {e.data["ticker"] for e in seen if e.event == "price"} == {"btc_usd"}
        assert consecutive(service.simulator, "btc_usd", prices(seen))
        bobs = await b.events_for(0.5)
        assert {e.data["ticker"] for e in bobs if e.event == "price"} == {"eth_usd"}

        # A subscription change reaches the open stream at once, with the latest price.
        await subscribe(bob, "bob", "btc_usd", 0)
        assert (await b.until("price", timeout=1.0, ticker="btc_usd")).data["ticker"] == "btc_usd"

        cancelled = await alice.get("/api/v1/market/alice/cancel_order/btc_usd")
        assert cancelled.json() == {"user_id": "alice", "removed": ["btc_usd"]}
        last_sent = service.simulator.history("btc_usd")[-1][0]
        after = await a.events_for(0.5)
        assert [ts for ts in prices(after) if ts > last_sent] == []

        removed = await bob.get("/api/v1/market/bob/cancel_all_orders")
        assert removed.json() == {"user_id": "bob", "removed": ["btc_usd", "eth_usd"]}
        assert (await bob.get("/api/v1/market/bob/cancel_order/eth_usd")).status_code == 404
    await alice.aclose()
    await bob.aclose()


async def test_timer_sets_the_cadence(service: Service) -> None:
    client = service.client_for(await service.sign_in("alice"))
    await subscribe(client, "alice", "btc_usd", 1)
    await subscribe(client, "alice", "eth_usd", 0)
    loop = asyncio.get_running_loop()
    async with open_stream(client) as stream:
        await stream.until("connected")
        arrivals: list[float] = []
        every_tick: list[int] = []
        end = loop.time() + 3.5
        while loop.time() < end:
            event = await stream.next_event()
            if event.event == "price" and event.data["ticker"] == "btc_usd":
                arrivals.append(loop.time())
            elif event.event == "price":
                every_tick.append(event.data["timestamp"])
    # The latest at once, then one a second (the simulator ticks 20 times a second).
    assert len(arrivals) in (4, 5)
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals[1:])]
    assert all(0.8 < gap < 1.25 for gap in gaps), gaps
    assert len(every_tick) > 40
    assert consecutive(service.simulator, "eth_usd", every_tick)
    await client.aclose()


async def test_last_event_id_resumes_without_gaps_or_repeats(service: Service) -> None:
    client = service.client_for(await service.sign_in("alice"))
    await subscribe(client, "alice", "btc_usd", 0)
    async with open_stream(client) as stream:
        first = [await stream.until("price") for _ in range(5)]
    resume_from = first[-1].data["timestamp"]
    await eventually(
        lambda: service.simulator.history("btc_usd")[-1][0] > resume_from + 1000,
        what="a second of ticks missed",
    )
    headers = {"Last-Event-ID": first[-1].id or ""}
    async with open_stream(client, headers=headers) as stream:
        await stream.until("connected")
        resumed = [await stream.until("price") for _ in range(40)]
    stamps = prices(first) + prices(resumed)
    assert stamps == sorted(set(stamps)), "a tick came twice or out of order"
    assert consecutive(service.simulator, "btc_usd", stamps)
    await client.aclose()


async def test_subscriptions_survive_a_restart(simulator: Simulator, sqlite_url: str) -> None:
    async with running_service(simulator, sqlite_url) as first:
        token = await first.sign_in("alice")
        async with first.client_for(token) as client:
            await subscribe(client, "alice", "sol_usdc", 0)
    async with (
        running_service(simulator, sqlite_url) as second,
        second.client_for(token) as client,
        open_stream(client) as stream,
    ):
        if True:
            connected = await stream.until("connected")
            assert connected.data["subscriptions"] == [{"ticker": "sol_usdc", "timer": 0}]
            # sol_usdc is not tracked: prices flow because ingest follows stored subscriptions.
            before = simulator.history("sol_usdc")[-1][0]
            live = await stream.until("price")
            while live.data["timestamp"] <= before:
                live = await stream.until("price")


async def test_stream_limits_answer_with_a_sentence(simulator: Simulator, sqlite_url: str) -> None:
    async with running_service(
        simulator, sqlite_url, SSE_MAX_STREAMS_PER_USER=2, SSE_MAX_STREAMS=3
    ) as service:
        alice = service.client_for(await service.sign_in("alice"))
        bob = service.client_for(await service.sign_in("bob"))
        async with open_stream(alice) as s1, open_stream(alice) as s2:
            await s1.until("connected")
            await s2.until("connected")
            async with open_stream(alice) as refused:
                assert refused.response.status_code == 429
                body = await refused.response.aread()
                assert b"already has 2 open streams" in body
            async with open_stream(bob) as s3:
                await s3.until("connected")
                async with open_stream(bob) as full:
                    assert full.response.status_code == 503
                    assert b"maximum of 3 streams" in await full.response.aread()
        await eventually(lambda: service.runtime.hub.open_streams == 0, what="streams freed")
        async with open_stream(alice) as again:  # closed streams no longer count
            assert (await again.until("connected")).data["user_id"] == "alice"
        await alice.aclose()
        await bob.aclose()


async def _read_until_connected(reader: asyncio.StreamReader) -> None:
    async with asyncio.timeout(10):
        while b"event: connected" not in await reader.readline():
            pass


async def test_a_slow_reader_is_dropped_and_others_keep_their_cadence(
    simulator: Simulator, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_service(simulator, sqlite_url, SSE_CLIENT_BUFFER=20) as service:
        token = await service.sign_in("alice")
        client = service.client_for(token)
        names = (await client.get("/api/v1/tickers")).json()["tickers"]
        for ticker in names:  # every index, every tick: about 900 events a second
            await subscribe(client, "alice", ticker, 0)
        hub = service.runtime.hub
        host, port = service.base_url.removeprefix("http://").split(":")
        # A client that asks for the stream and then never reads a byte of it.
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        slow.setblocking(False)
        await asyncio.get_running_loop().sock_connect(slow, (host, int(port)))
        request = (
            f"GET /api/v2/sse/connection HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        )
        slow.send(request.encode())
        async with open_stream(client) as healthy:
            await healthy.until("connected")
            await eventually(
                lambda: hub.streams_dropped == 1, timeout=60, what="the slow reader dropped"
            )
            assert hub.open_streams == 1
            events = await healthy.events_for(1.0)
            assert consecutive(simulator, "eth_usd", prices(events, "eth_usd"))
        # The server hung up on it: a reset (test_dropped_client.py checks how soon).
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                while await loop.sock_recv(slow, 65_536):
                    pass
        slow.close()
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        await client.aclose()


async def test_connect_and_disconnect_a_thousand_times_leaves_nothing(service: Service) -> None:
    token = await service.sign_in("alice")
    client = service.client_for(token)
    await subscribe(client, "alice", "btc_usd", 0)
    host, port = service.base_url.removeprefix("http://").split(":")
    request = (
        f"GET /api/v2/sse/connection HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()
    hub = service.runtime.hub
    service.runtime.stream_opens = OpenLimiter(burst=10_000)  # a reconnect loop, on purpose

    async def cycle() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await _read_until_connected(reader)
        writer.close()
        await writer.wait_closed()

    for _ in range(50):  # warm-up: lazy imports, caches, the pool
        await cycle()
    await eventually(lambda: hub.open_streams == 0, what="warm-up streams freed")
    tasks_before = len(asyncio.all_tasks())
    for _ in range(1000):
        await cycle()
    await eventually(lambda: hub.open_streams == 0, what="every stream freed")
    await eventually(lambda: len(asyncio.all_tasks()) <= tasks_before, what="tasks finished")
    assert not hub.registered
    gc.collect()
    assert [obj for obj in gc.get_objects() if isinstance(obj, HubStream)] == []
    assert all(not streams for streams in hub._every_tick.values())
    stale = [entry for entry in hub.timers.entries() if not entry[2].closed]
    assert stale == []
    await client.aclose()


async def test_status_gap_and_ping_reach_the_stream(service: Service) -> None:
    client = service.client_for(await service.sign_in("alice"))
    await subscribe(client, "alice", "btc_usd", 0)
    hub = service.runtime.hub
    async with open_stream(client) as stream:
        await stream.until("connected")
        assert (await stream.until("status")).data["upstream"] == "connected"
        await sim_control(service.simulator, ("sim/drop_connections", {}))
        assert (await stream.until("status")).data["upstream"] == "reconnecting"
        assert (await stream.until("status")).data["upstream"] == "connected"

        service.runtime.bus.publish(Gap("btc_usd", 1_000, 2_000, "test"))
        service.runtime.bus.publish(Gap("eth_usd", 1_000, 2_000, "not subscribed"))
        gap = await stream.until("gap")
        assert gap.data == {"ticker": "btc_usd", "from": 1_000, "to": 2_000}

    await client.get("/api/v1/market/alice/cancel_all_orders")
    hub.ping_interval = 0.2
    async with open_stream(client) as idle:
        await idle.until("connected")
        await eventually(lambda: "ping" in idle.parser.comments, what="a ping comment")
    await client.aclose()


async def test_bad_stream_parameters_get_a_sentence_and_no_stream(service: Service) -> None:
    client = service.client_for(await service.sign_in("alice"))
    bad = [
        ({"params": {"timer": "soon"}}, "timer"),
        ({"params": {"timer": "86401"}}, "timer"),
        ({"params": {"timer": "-1"}}, "timer"),
        ({"headers": {"Last-Event-ID": "btc_usd:" + "1" * 200}}, "Last-Event-ID"),
        ({"params": {"token": "t" * 300}}, "token"),
    ]
    for options, named in bad:
        for method in ("GET", "POST"):
            response = await client.request(method, "/api/v2/sse/connection", **options)
            assert response.status_code == 422, (options, response.text)
            assert response.json()["code"] == "invalid_input"
            assert named in response.json()["detail"]
    anonymous = httpx.AsyncClient(base_url=service.base_url)
    refused = await anonymous.get("/api/v2/sse/connection")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == "Bearer"
    assert refused.json()["code"] == "unauthorized"
    assert service.runtime.hub.open_streams == 0
    await anonymous.aclose()
    await client.aclose()


async def test_a_cancel_made_while_the_stream_opens_is_not_undone(service: Service) -> None:
    client = service.client_for(await service.sign_in("alice"))
    await subscribe(client, "alice", "btc_usd", 0)
    subscriptions = service.runtime.subscriptions
    read = subscriptions.subscriptions

    async def read_then_cancel(user_id: str) -> dict[str, int | None]:
        stored = await read(user_id)  # still lists btc_usd
        cancelled = await client.get("/api/v1/market/alice/cancel_order/btc_usd")
        assert cancelled.status_code == 200  # committed while the stream is being set up
        return stored

    subscriptions.subscriptions = read_then_cancel  # type: ignore[method-assign]
    try:
        async with open_stream(client) as stream:
            connected = await stream.until("connected")
    finally:
        del subscriptions.subscriptions
    assert connected.data["subscriptions"] == []
    await client.aclose()
