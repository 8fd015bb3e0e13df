"""The Deribit simulator for tests: a real, running simulator on a free port, and a raw client.

- `simulator`: a started `Simulator` with fast settings (a tick every 50 ms per index on average,
  heartbeat from 0.5 s, every tick in the 1h chart).
- `simulator_factory`: `await simulator_factory(**overrides)` starts one with other settings.
- `connect`: `await connect(sim)` opens a `SimClient`, a small JSON-RPC client for assertions.
All are stopped or closed after the test.
"""

import asyncio
import itertools
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from cryptomarket.deribit.simulator import Simulator, SimulatorConfig

FAST_SETTINGS: dict[str, Any] = {
    "port": 0,
    "tick_interval": 0.05,
    "seed": 7,
    "min_heartbeat_interval": 0.5,
    # Every tick in the 1h chart, so a backfill can be exact; tests of Deribit-like coarse
    # history ask for chart_spacing=60.
    "chart_spacing": 0,
}
TIMEOUT = 5.0

Frame = dict[str, Any]


class SimClient:
    """Answers are matched by id; every other frame is kept, in order, for `wait_for`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self.pending: deque[Frame] = deque()

    async def send(self, frame: Frame | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else json.dumps(frame))

    async def request(self, method: str, params: Frame | None = None, **extra: Any) -> Frame:
        """Send a request and return its whole answer frame."""
        request_id = extra.pop("id", next(self._ids))
        frame = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}}
        await self.send({**frame, **extra})
        return await self.wait_for(lambda f: f.get("id") == request_id and "method" not in f)

    async def result(self, method: str, params: Frame | None = None) -> Any:
        frame = await self.request(method, params)
        assert "result" in frame, frame
        return frame["result"]

    async def error(self, method: str, params: Frame | None = None) -> Frame:
        frame = await self.request(method, params)
        assert "error" in frame, frame
        return dict(frame["error"])

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        """The next frame, buffered or new."""
        if self.pending:
            return self.pending.popleft()
        async with asyncio.timeout(timeout):
            return dict(json.loads(await self.ws.recv()))

    async def wait_for(self, predicate: Callable[[Frame], bool], timeout: float = TIMEOUT) -> Frame:
        """The first frame matching; the others stay buffered."""
        for frame in self.pending:
            if predicate(frame):
                self.pending.remove(frame)
                return frame
        async with asyncio.timeout(timeout):
            while True:
                frame = json.loads(await self.ws.recv())
                if predicate(frame):
                    return dict(frame)
                self.pending.append(frame)

    async def tick(self, channel: str | None = None, timeout: float = TIMEOUT) -> Frame:
        """The `data` of the next subscription notification (of `channel`, if given)."""
        frame = await self.wait_for(
            lambda f: (
                f.get("method") == "subscription"
                and (channel is None or f["params"]["channel"] == channel)
            ),
            timeout,
        )
        return dict(frame["params"]["data"])

    async def heartbeat(self, timeout: float = TIMEOUT) -> Frame:
        return await self.wait_for(lambda f: f.get("method") == "heartbeat", timeout)

    def discard_pending(self) -> None:
        self.pending.clear()

    async def auth(self, client_id: str = "sim-alice", **params: Any) -> Frame:
        result: Frame = await self.result(
            "public/auth",
            {
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": f"{client_id}-secret",
                **params,
            },
        )
        return result

    async def closed(self, timeout: float = TIMEOUT) -> ConnectionClosed:
        """Read (and keep) frames until the socket closes; returns how it closed.

        `.rcvd` is the server's close frame (code, reason), None when the connection was dropped.
        """
        async with asyncio.timeout(timeout):
            while True:
                try:
                    self.pending.append(json.loads(await self.ws.recv()))
                except ConnectionClosed as closed:
                    return closed


@pytest.fixture
async def simulator_factory() -> AsyncIterator[Callable[..., Awaitable[Simulator]]]:
    started: list[Simulator] = []

    async def start(**overrides: Any) -> Simulator:
        simulator = Simulator(SimulatorConfig(**{**FAST_SETTINGS, **overrides}))
        await simulator.start()
        started.append(simulator)
        return simulator

    yield start
    for simulator in started:
        await simulator.stop()


@pytest.fixture
async def simulator(simulator_factory: Callable[..., Awaitable[Simulator]]) -> Simulator:
    return await simulator_factory()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[SimClient]]]:
    clients: list[SimClient] = []

    async def open_client(simulator: Simulator, **kwargs: Any) -> SimClient:
        client = SimClient(await ws_connect(simulator.url, **kwargs))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        await client.ws.close()


async def sim_control(simulator: Simulator, *calls: tuple[str, Frame]) -> None:
    """Steer a running simulator as an operator would: sim/ calls on a socket of their own."""
    async with ws_connect(simulator.url) as ws:
        for request_id, (method, params) in enumerate(calls):
            request = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            await ws.send(json.dumps(request))
            assert json.loads(await ws.recv())["result"] == "ok"
