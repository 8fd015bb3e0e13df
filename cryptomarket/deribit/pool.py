"""A pool of persistent Deribit connections for request/response calls (SPEC section 7).

Public calls share up to `size` connections, opened lazily and spread by load. A call made under a
user's key takes a connection for itself (`authenticated`): the socket carries that user's
authentication, so nobody else may use it, and it is closed afterwards rather than returned.
All connections spend from one credit budget.

Every socket is opened through a gate: in distributed mode it counts the deployment's sockets
in Redis (`cryptomarket/distributed/deribit_sockets.py`) and may refuse, or ask for sockets back
when this process's share shrinks; the pool then shares the sockets it has, or waits for room.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from cryptomarket.deribit.auth import Credentials
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.connection import DeribitConnection
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.errors import ConnectionClosed, ConnectionLost, DeribitTransportError

logger = logging.getLogger("cryptomarket.deribit.pool")

GATE_POLL = 0.25  # seconds between asking a refusing gate again (Redis has no event for room)


class SocketGate(Protocol):
    async def try_open(self) -> str | None:
        """A ticket for one more socket, or None while there is no room for it."""
        ...

    async def closed(self, ticket: str) -> None: ...

    def on_over(self, give_back: Callable[[int], None]) -> None:
        """`give_back(n)`: the process holds n sockets more than it may."""
        ...


class OpenGate:
    """One process alone (embedded mode): the pool's own size is the only limit."""

    async def try_open(self) -> str | None:
        return "local"

    async def closed(self, ticket: str) -> None:
        return None

    def on_over(self, give_back: Callable[[int], None]) -> None:
        return None


class DeribitPool:
    def __init__(
        self,
        url: str,
        *,
        size: int = 10,
        budget: CreditBudget | None = None,
        gate: SocketGate | None = None,
        heartbeat_interval: float = 10.0,
        request_timeout: float = 10.0,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self.url = url
        self.size = size
        self.budget = budget or CreditBudget()
        self.heartbeat_interval = heartbeat_interval
        self.request_timeout = request_timeout
        self._backoff = backoff
        self._gate = gate or OpenGate()
        self._gate.on_over(self._give_back)
        self._tickets: dict[DeribitConnection, str] = {}
        self._refused_until = 0.0  # a refusing gate is asked again only after GATE_POLL
        self._room_made = asyncio.Event()  # a slot or a ticket was given back
        self._closing: set[asyncio.Task[None]] = set()
        # One slot per socket, shared by the public connections and the exclusive checkouts.
        self._slots = asyncio.Semaphore(size)
        # Checkouts under users' keys may hold at most half of the sockets: public calls
        # (index list, history, prices) always keep some.
        self._checkouts = asyncio.Semaphore(max(1, size // 2))
        self._public: list[DeribitConnection] = []
        self._checked_out: set[DeribitConnection] = set()
        self._opened = 0
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._public) + len(self._checked_out)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """A public request on the least busy connection; retried once if its socket dies.

        Public methods are reads, so sending one again after a lost socket cannot do harm.
        """
        try:
            connection = await self._pick()
            return await connection.call(method, params, timeout=timeout)
        except (ConnectionLost, ConnectionClosed):
            # The socket died, or was handed to a checkout and closed: try once on another.
            connection = await self._pick()
            return await connection.call(method, params, timeout=timeout)

    @contextlib.asynccontextmanager
    async def authenticated(self, credentials: Credentials) -> AsyncIterator[DeribitConnection]:
        """A connection of one's own, authenticated with `credentials`, closed on exit.

        Wrong credentials raise InvalidCredentials (or Unauthorized) once: nothing retries them.
        """
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._checkouts.acquire()
        except TimeoutError:
            raise ConnectionLost(
                f"all Deribit connections for signed-in calls stayed busy for "
                f"{self.request_timeout:g}s"
            ) from None
        try:
            connection = await self._own_socket()
            self._checked_out.add(connection)
            try:
                await connection.authenticate(credentials)
                yield connection
            finally:
                self._checked_out.discard(connection)
                await connection.close()
                await self._forget(connection)
        finally:
            self._checkouts.release()

    async def close(self) -> None:
        self._closed = True
        connections = [*self._public, *self._checked_out]
        self._public.clear()
        await asyncio.gather(*(connection.close() for connection in connections))
        await asyncio.gather(*self._closing, return_exceptions=True)
        for connection in connections:
            await self._forget(connection)

    async def _pick(self) -> DeribitConnection:
        """An idle live socket, else a new one if there is room, else the least busy one."""
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        while True:
            if self._closed:
                raise DeribitTransportError("the Deribit pool is closed")
            for dead in [connection for connection in self._public if connection.closed]:
                self._public.remove(dead)  # gave up for good: its slot goes to a replacement
                await self._forget(dead)
            best = self._least_busy()
            if best is not None and best.connected and best.in_flight == 0:
                return best
            connection = await self._open()
            if connection is not None:
                self._public.append(connection)
                return connection
            if best is not None:
                return best
            await self._wait_for_room(deadline)

    async def _own_socket(self) -> DeribitConnection:
        """A new socket if there is room, else a public one handed over, else wait for room."""
        deadline = asyncio.get_running_loop().time() + self.request_timeout
        while True:
            connection = await self._open()
            if connection is None:
                connection = self._take_public()
            if connection is not None:
                return connection
            await self._wait_for_room(deadline)

    def _least_busy(self) -> DeribitConnection | None:
        """Live sockets first, then the fewest requests in flight."""
        return min(self._public, key=lambda c: (not c.connected, c.in_flight), default=None)

    def _take_public(self) -> DeribitConnection | None:
        """With no room for a socket, the least busy public connection goes to a checkout.

        Its requests in flight still get their answers; no new public call is sent on it.
        """
        connection = self._least_busy()
        if connection is not None:
            self._public.remove(connection)
        return connection

    async def _open(self) -> DeribitConnection | None:
        """A new connection, if this pool has a free slot and the gate a ticket."""
        loop = asyncio.get_running_loop()
        if self._slots.locked() or loop.time() < self._refused_until:
            return None
        await self._slots.acquire()  # free, so this does not wait
        try:
            ticket = await self._gate.try_open()
        except BaseException:
            self._slots.release()
            raise
        if ticket is None or self._closed:
            self._slots.release()
            if ticket is not None:
                await self._gate.closed(ticket)
            self._refused_until = loop.time() + GATE_POLL
            return None
        connection = self._new_connection()
        self._tickets[connection] = ticket
        return connection

    async def _wait_for_room(self, deadline: float) -> None:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise ConnectionLost(
                f"no Deribit connection could be had for {self.request_timeout:g}s: "
                f"all {self.open_connections} of this process's stayed busy"
            )
        self._room_made.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room_made.wait(), min(left, GATE_POLL))

    async def _forget(self, connection: DeribitConnection) -> None:
        """A connection closed for good gives back its slot and its ticket."""
        ticket = self._tickets.pop(connection, None)
        if ticket is None:
            return
        self._slots.release()
        self._refused_until = 0.0
        self._room_made.set()
        await self._gate.closed(ticket)

    def _give_back(self, excess: int) -> None:
        """The gate's share shrank: close up to `excess` public sockets with nothing in flight."""
        idle = sorted((c for c in self._public if c.in_flight == 0), key=lambda c: c.connected)[
            :excess
        ]
        for connection in idle:
            self._public.remove(connection)
            task = asyncio.create_task(self._retire(connection))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        if idle:
            logger.info("gave back %d Deribit socket(s) to the deployment's share", len(idle))

    async def _retire(self, connection: DeribitConnection) -> None:
        await connection.close()
        await self._forget(connection)

    def _new_connection(self) -> DeribitConnection:
        self._opened += 1
        connection = DeribitConnection(
            self.url,
            budget=self.budget,
            heartbeat_interval=self.heartbeat_interval,
            request_timeout=self.request_timeout,
            backoff=self._backoff(),
            name=f"deribit-pool-{self._opened}",
        )
        connection.start()
        logger.debug("opened %s (%d of %d)", connection.name, self.open_connections + 1, self.size)
        return connection
