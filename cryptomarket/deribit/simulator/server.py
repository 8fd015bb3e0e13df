"""The simulator's WebSocket server: handshake rules, one session per socket, and the ticker."""

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import Counter
from http import HTTPStatus
from types import TracebackType
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from cryptomarket.deribit.simulator import rpc
from cryptomarket.deribit.simulator.config import SimulatorConfig
from cryptomarket.deribit.simulator.dispatch import handle_frame
from cryptomarket.deribit.simulator.methods import CHANNEL_PREFIX
from cryptomarket.deribit.simulator.session import Session
from cryptomarket.deribit.simulator.state import SimState

log = logging.getLogger("cryptomarket.simulator")

PATH = "/ws/api/v2"
# The ticker sleeps at least a twentieth of the interval (within these bounds) between rounds,
# so ticks due close together leave in one wakeup; each keeps its own due time as its stamp.
MIN_SLEEP, MAX_SLEEP = 0.005, 0.05


class Simulator:
    """A Deribit look-alike on `ws://host:port/ws/api/v2` (SPEC §8)."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.port = config.port
        self._state = SimState(config)
        self._server: Server | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._instrument_ticker: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        # Sockets per remote IP, counted from the accepted handshake (the 33rd gets HTTP 429).
        self._by_ip: dict[str, set[ServerConnection]] = {}
        self.refused_over_limit = 0  # handshakes refused for the per-IP limit

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"ws://{host}:{self.port}{PATH}"

    @property
    def calls(self) -> Counter[str]:
        """Requests received per method name, `sim/*` included."""
        return self._state.calls

    @property
    def errors(self) -> Counter[int]:
        """Error codes answered."""
        return self._state.errors

    @property
    def open_connections(self) -> int:
        return len(self._state.sessions)

    def price(self, index_name: str) -> float:
        """The current price (the last tick's)."""
        return self._state.market.price(index_name)

    def history(self, index_name: str) -> list[tuple[int, float]]:
        """The ticks generated in the last hour, chronological (timestamp_ms, price)."""
        return self._state.market.history(index_name)

    def produced(
        self, index_name: str, since: int | None = None, until: int | None = None
    ) -> list[tuple[int, float]]:
        """What `sim/produced` answers: the ticks with since < timestamp <= until."""
        ticks, _ = self._state.market.produced(index_name, since, until)
        return [(int(ts), price) for ts, price in ticks]

    def produced_instrument(
        self, instrument_name: str, since: int | None = None, until: int | None = None
    ) -> list[tuple[int, float]]:
        """What `sim/produced` answers for an instrument: its `100ms` frames (timestamp, mark)."""
        found = self._state.instruments.produced(instrument_name, since, until)
        return [(int(ts), mark) for ts, mark in (found[0] if found else [])]

    def instrument_names(self, kind: str | None = None) -> list[str]:
        """The live instruments' names (of one kind: future or option)."""
        live = self._state.instruments.catalogue.live.values()
        return sorted(i.name for i in live if kind is None or i.kind == kind)

    def expire_instrument(self, instrument_name: str, ticker_answer: str = "final") -> bool:
        now = time.time_ns() // 1_000_000
        return self._state.instruments.expire(instrument_name, now, ticker_answer)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            # Deribit's liveness check is its JSON heartbeat; it documents no WebSocket pings.
            ping_interval=None,
            close_timeout=2,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick_loop(), name="sim-ticker")
        self._instrument_ticker = asyncio.create_task(
            self._instrument_loop(), name="sim-instruments"
        )

    async def stop(self) -> None:
        """Close every connection and stop ticking; safe to call twice."""
        for task in (self._ticker, self._instrument_ticker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._ticker = self._instrument_ticker = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> "Simulator":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path != PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if asyncio.get_running_loop().time() < self._state.refuse_until:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Service Unavailable\n")
        ip = _remote_ip(connection)
        live = {c for c in self._by_ip.get(ip, ()) if c.state is not State.CLOSED}
        if len(live) >= self.config.max_connections_per_ip:
            log.info("refused a connection from %s: %d already open", ip, len(live))
            self.refused_over_limit += 1
            return connection.respond(HTTPStatus.TOO_MANY_REQUESTS, "Too Many Requests\n")
        live.add(connection)
        self._by_ip[ip] = live
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        state = self._state
        ip = _remote_ip(ws)
        session = Session(
            next(self._ids),
            ws,
            ip,
            latency=lambda: state.latency,
            jitter=lambda: state.reply_jitter,
        )
        state.sessions[session.id] = session
        log.info("connection %d opened from %s", session.id, ip)
        try:
            async for frame in ws:
                handle_frame(state, session, frame)
        except ConnectionClosed:
            pass
        finally:
            del state.sessions[session.id]
            state.tokens.drop_connection(session.id)
            self._by_ip.get(ip, set()).discard(ws)
            if not self._by_ip.get(ip, True):
                del self._by_ip[ip]
            await session.shutdown()
            log.info("connection %d closed (code %s)", session.id, ws.close_code)

    async def _tick_loop(self) -> None:
        """One timer for every index: a heap of (due, index, step), each index on its own
        jittered clock, stamped with its own due time."""
        loop = asyncio.get_running_loop()
        state, market = self._state, self._state.market
        interval = self.config.tick_interval
        least = min(max(interval / 20, MIN_SLEEP), MAX_SLEEP)
        start = loop.time()
        queue = [(start + market.first_delay(name), name, interval) for name in market.index_names]
        heapq.heapify(queue)
        while True:
            await asyncio.sleep(max(queue[0][0] - loop.time(), least))
            now = loop.time()
            wall_ms = time.time_ns() / 1e6
            while queue[0][0] <= now:
                due, name, step = heapq.heappop(queue)
                if now < state.paused_until:
                    # Resume spread over one interval; the walk's own draws stay untouched.
                    resume = state.paused_until + random.random() * interval
                    heapq.heappush(queue, (resume, name, step))
                    continue
                if now - due > interval:
                    due = now  # fell behind (suspended host): tick now, never burst
                try:
                    self._produce(name, int(wall_ms - (now - due) * 1000), step)
                except Exception:  # a bug must not stop the prices
                    log.exception("tick of %s failed", name)
                following = market.next_interval(name)
                heapq.heappush(queue, (due + following, name, following))

    def _produce(self, name: str, now_ms: int, step: float) -> None:
        """One tick of one index, to every connection subscribed to its channel."""
        timestamp, price = self._state.market.tick(name, now_ms, step)
        channel = CHANNEL_PREFIX + name
        frame = None
        for session in tuple(self._state.sessions.values()):
            if channel in session.subscriptions:
                if frame is None:
                    data = {"index_name": name, "price": price, "timestamp": timestamp}
                    frame = rpc.subscription(channel, data)
                session.send(frame)

    async def _instrument_loop(self) -> None:
        """The instruments' updates, every `instrument_interval / 4` (each on its own jittered
        clock), while ticks are not paused."""
        loop = asyncio.get_running_loop()
        state = self._state
        while True:
            await asyncio.sleep(max(self.config.instrument_interval / 4, MIN_SLEEP))
            if loop.time() < state.paused_until:
                continue
            try:
                frames = state.instruments.step(time.time_ns() // 1_000_000)
            except Exception:  # a bug must not stop the prices
                log.exception("instrument updates failed")
                continue
            for channel, data in frames:
                frame = None
                for session in tuple(state.sessions.values()):
                    if channel in session.subscriptions:
                        frame = frame or rpc.subscription(channel, data)
                        session.send(frame)


def _remote_ip(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "unknown"


async def run(config: SimulatorConfig) -> None:
    """Serve until cancelled (`cryptomarket simulate`)."""
    simulator = Simulator(config)
    await simulator.start()
    log.info("Deribit simulator listening on %s", simulator.url)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
