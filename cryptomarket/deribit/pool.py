"""A pool of persistent Deribit connections for request/response calls (SPEC section 7).

Public calls share up to `size` connections, opened lazily and spread by load. A call made under a
user's key takes a connection for itself (`authenticated`): the socket carries that user's
authentication, so nobody else may use it, and it is closed afterwards rather than returned.
All connections spend from one credit budget.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from cryptomarket.deribit.auth import Credentials
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.connection import DeribitConnection
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.errors import ConnectionClosed, ConnectionLost, DeribitTransportError

logger = logging.getLogger("cryptomarket.deribit.pool")


class DeribitPool:
    def __init__(
        self,
        url: str,
        *,
        size: int = 10,
        budget: CreditBudget | None = None,
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
            connection = self._take_public()
            if connection is None:
                await self._acquire_slot()
                connection = self._new_connection()
            self._checked_out.add(connection)
            try:
                await connection.authenticate(credentials)
                yield connection
            finally:
                self._checked_out.discard(connection)
                await connection.close()
                self._slots.release()
        finally:
            self._checkouts.release()

    async def close(self) -> None:
        self._closed = True
        connections = [*self._public, *self._checked_out]
        self._public.clear()
        await asyncio.gather(*(connection.close() for connection in connections))

    async def _pick(self) -> DeribitConnection:
        if self._closed:
            raise DeribitTransportError("the Deribit pool is closed")
        for dead in [connection for connection in self._public if connection.closed]:
            self._public.remove(dead)  # gave up for good: its slot goes to a replacement
            self._slots.release()
        best = self._least_busy()
        if best is not None and best.connected and best.in_flight == 0:
            return best
        if not self._slots.locked() or best is None:
            await self._acquire_slot()
            connection = self._new_connection()
            self._public.append(connection)
            return connection
        return best

    def _least_busy(self) -> DeribitConnection | None:
        """Live sockets first, then the fewest requests in flight."""
        return min(self._public, key=lambda c: (not c.connected, c.in_flight), default=None)

    def _take_public(self) -> DeribitConnection | None:
        """With every slot taken, the least busy public connection is handed to a checkout.

        Its requests in flight still get their answers; no new public call is sent on it.
        """
        if not self._slots.locked():
            return None
        connection = self._least_busy()
        if connection is not None:
            self._public.remove(connection)
        return connection

    async def _acquire_slot(self) -> None:
        try:
            async with asyncio.timeout(self.request_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise ConnectionLost(
                f"all {self.size} Deribit connections stayed busy for {self.request_timeout:g}s"
            ) from None

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
