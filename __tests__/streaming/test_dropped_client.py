"""A client that stops reading is dropped, and its connection is aborted at once: its descriptor
and buffers go, instead of waiting forever for it to drain.

The service runs in this process, so its open sockets are this process's: one client socket of
ours stays open on purpose until the end, every other one must be back to the baseline.
"""

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

import pytest

from __tests__.helpers import eventually
from __tests__.service import Service, running_service
from __tests__.sse import open_stream
from cryptomarket.core import server
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.streaming import endpoints
from cryptomarket.streaming.response import NOTHING_MORE


def open_descriptors() -> int:
    """This process's open sockets (files, e.g. a new pooled SQLite connection, do not count)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # gone since the listing
            count += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
    return count


@pytest.fixture
async def flooding(simulator: Simulator, sqlite_url: str) -> AsyncIterator[Service]:
    """The service with a small client buffer, its user on every index at every tick."""
    async with running_service(simulator, sqlite_url, SSE_CLIENT_BUFFER=20) as service:
        token = await service.sign_in("alice")
        service.client.headers["Authorization"] = f"Bearer {token}"
        names = (await service.client.get("/api/v1/tickers")).json()["tickers"]
        for ticker in names:  # about 900 events a second
            created = await service.client.get(
                f"/api/v1/market/alice/create_order/{ticker}?timer=0"
            )
            assert created.status_code in (200, 201)
        async with open_stream(service.client) as warm_up:  # pools and lazy imports, opened once
            await warm_up.until("price")
        await eventually(lambda: service.runtime.hub.open_streams == 0, what="warm-up closed")
        yield service


async def connect_and_stop_reading(service: Service) -> socket.socket:
    host, port = service.base_url.removeprefix("http://").split(":")
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    slow.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow, (host, int(port)))
    token = service.client.headers["Authorization"]
    request = f"GET /api/v2/sse/connection HTTP/1.1\r\nHost: {host}\r\nAuthorization: {token}\r\n"
    slow.send(f"{request}\r\n".encode())
    return slow


async def the_server_hung_up(slow: socket.socket) -> None:
    """What reaches the client once the server is gone: an RST, or the rest then the end."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(10):
        try:
            while await loop.sock_recv(slow, 65_536):
                pass
        except ConnectionResetError:
            pass


async def test_a_dropped_slow_client_is_disconnected_at_once(flooding: Service) -> None:
    hub = flooding.runtime.hub
    baseline = open_descriptors()
    slow = await connect_and_stop_reading(flooding)
    try:
        await eventually(
            lambda: hub.streams_dropped == 1, timeout=60, what="the slow reader dropped"
        )
        # Ours stays open (unread); the server's side of it is closed within a bound.
        await eventually(
            lambda: open_descriptors() <= baseline + 1, timeout=3, what="the server's socket closed"
        )
        await the_server_hung_up(slow)
    finally:
        slow.close()
    await eventually(
        lambda: open_descriptors() <= baseline, what="descriptors back to the baseline"
    )


async def test_without_the_abort_hook_the_server_still_frees_the_socket(
    flooding: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another server's scope has none of our extensions (no abort, no direct body, no word of
    a lost connection): the server's sweep of connections that closed but cannot drain aborts
    this one after its grace."""
    monkeypatch.setattr(endpoints, "connection_of", lambda scope, send: NOTHING_MORE)
    monkeypatch.setattr(server, "DRAIN_GRACE", 0.5)
    hub = flooding.runtime.hub
    baseline = open_descriptors()
    slow = await connect_and_stop_reading(flooding)
    try:
        await eventually(
            lambda: hub.streams_dropped == 1, timeout=60, what="the slow reader dropped"
        )
        await eventually(
            lambda: open_descriptors() <= baseline + 1, timeout=5, what="the server's socket closed"
        )
        await the_server_hung_up(slow)
    finally:
        slow.close()
    await eventually(
        lambda: open_descriptors() <= baseline, what="descriptors back to the baseline"
    )
