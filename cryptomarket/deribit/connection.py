"""One persistent WebSocket to Deribit and everything that belongs to it.

The connection owns its socket, its pending requests (deribit/rpc.py), its channel set (replayed on
reconnect, never doubled), its heartbeat and its token. A supervisor task keeps it alive: connect,
set the heartbeat, authenticate, re-subscribe, read until the socket dies, back off, start again.
Callers only see `call`, `subscribe`, `unsubscribe` and the notification and state callbacks.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from enum import StrEnum
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed as SocketClosed
from websockets.exceptions import InvalidHandshake, InvalidURI

from cryptomarket.core.tasks import cancel_and_wait
from cryptomarket.deribit.auth import Credentials, Token
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.errors import (
    AuthorizationRequired,
    ConnectionClosed,
    ConnectionLost,
    CreditTimeout,
    DeribitError,
    DeribitTransportError,
    Forbidden,
    InvalidCredentials,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
)
from cryptomarket.deribit.rpc import PendingRequests, batches, number, request_frame

logger = logging.getLogger("cryptomarket.deribit")

NotificationHandler = Callable[[str, Any], None]
StateHandler = Callable[["ConnectionState"], None]

# Answers to `public/auth` that mean the key itself is refused: final, never retried.
FATAL_AUTH_ERRORS = (InvalidCredentials, Unauthorized, Forbidden, AuthorizationRequired)


class ConnectionState(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class DeribitConnection:
    def __init__(
        self,
        url: str,
        *,
        budget: CreditBudget,
        credentials: Credentials | None = None,
        heartbeat_interval: float = 10.0,
        request_timeout: float = 10.0,
        silence_timeout: float | None = None,
        backoff: Backoff | None = None,
        name: str = "deribit",
    ) -> None:
        self.url = url
        self.budget = budget
        self.credentials = credentials
        self.heartbeat_interval = heartbeat_interval
        self.request_timeout = request_timeout
        # Deribit sends a test_request about every interval (observed: 1.06 x); twice that with
        # nothing at all on the wire means the socket is dead, even if TCP has not noticed.
        self.silence_timeout = silence_timeout or max(
            2 * heartbeat_interval, heartbeat_interval + 2
        )
        self.backoff = backoff or Backoff()
        self.name = name

        self.state = ConnectionState.IDLE
        self.failure: BaseException | None = None
        self.token: Token | None = None
        self.reconnects = 0
        self._last_error: str = ""
        self._ws: ClientConnection | None = None
        self._pending = PendingRequests()
        self._callers = 0  # calls under way, waiting for the socket or credit included
        self._channels: set[str] = set()
        self._notification_handlers: list[NotificationHandler] = []
        self._state_handlers: list[StateHandler] = []
        self._state_changed = asyncio.Event()
        # Held by subscribe/unsubscribe and by a set-up's replay of the set: a change made
        # while a socket is being set up is either in the replay or sent after it, never lost.
        self._channel_changes = asyncio.Lock()
        self._replayed_on: ClientConnection | None = None  # the socket the set went out on
        # The set-up's refused public/auth, if that was what failed it.
        self._auth_refusal: DeribitError | None = None
        self._signing_in = False  # authenticate() waits for a set-up: its refusal is final
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._last_frame = 0.0

    # -- public interface -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.state is ConnectionState.CONNECTED

    @property
    def closed(self) -> bool:
        return self.state is ConnectionState.CLOSED

    @property
    def in_flight(self) -> int:
        """Calls under way, counted from their start: one still waiting for credit is busy too,
        so the pool spreads the next calls to other sockets."""
        return max(self._callers, len(self._pending))

    @property
    def channels(self) -> frozenset[str]:
        return frozenset(self._channels)

    def follows(self, channel: str) -> bool:
        """Whether the channel is in the set (no copy: asked for every notification)."""
        return channel in self._channels

    def on_notification(self, handler: NotificationHandler) -> Callable[[], None]:
        """Call `handler(channel, data)` for every subscription message; returns a remover."""
        self._notification_handlers.append(handler)
        return lambda: self._notification_handlers.remove(handler)

    def on_state(self, handler: StateHandler) -> Callable[[], None]:
        """Call `handler(state)` on every state change; returns a remover."""
        self._state_handlers.append(handler)
        return lambda: self._state_handlers.remove(handler)

    def start(self) -> None:
        """Start the supervisor; the socket opens in the background."""
        if self._supervisor is None and not self.closed:
            self._supervisor = asyncio.create_task(
                self._supervise(), name=f"{self.name}-supervisor"
            )

    async def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until the socket is open and set up; raise the failure that closed it for good."""
        self.start()
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.request_timeout):
                while not self.connected:
                    if self.closed:
                        raise self._closed_error()
                    await self._state_changed.wait()
        except TimeoutError:
            detail = f": {self._last_error}" if self._last_error else ""
            raise ConnectionLost(f"Deribit not reachable at {self.url}{detail}") from None

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send one JSON-RPC request and return its result; Deribit errors raise typed exceptions.

        Waits (within `timeout`) for the connection to be ready; then waits for credit, which is
        bounded by the budget; then waits `timeout` for the answer.
        """
        limit = self.request_timeout if timeout is None else timeout
        self._callers += 1
        try:
            await self.wait_ready(limit)
            return await self._request(method, params, timeout=limit)
        finally:
            self._callers -= 1

    async def subscribe(self, channels: Iterable[str]) -> list[str]:
        """Add channels to the set and subscribe them now; returns the ones Deribit acknowledged.

        A channel already in the set is not sent again. Channels Deribit does not acknowledge
        (unknown names are dropped silently by Deribit) leave the set and are logged. Changes
        go out one at a time, so an unsubscribe can never overtake a later subscribe. Until
        the socket's set-up has replayed the set, a change only edits the set (the replay
        takes it along); after that it goes out at once, even before the state says CONNECTED.
        An error answer, or no credit to send it in time, leaves them out of the set and raises.
        """
        async with self._channel_changes:
            new = sorted(set(channels) - self._channels)
            if not new:
                return []
            self._channels.update(new)
            ws = self._replayed_socket()
            if ws is None:
                return []  # the set-up of the next socket subscribes the whole set
            try:
                return await self._subscribe_now(new, priority=False)
            except CreditTimeout:  # never sent: not subscribed, and the socket is fine
                self._channels.difference_update(new)
                raise
            except DeribitTransportError:
                self._resync(ws)
                return []
            except DeribitError:  # answered with an error: not subscribed (the caller retries)
                self._channels.difference_update(new)
                raise

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Drop channels from the set and unsubscribe them upstream. An error answer, or no
        credit to send it in time, puts them back in the set and raises (still subscribed)."""
        async with self._channel_changes:
            gone = sorted(self._channels.intersection(channels))
            self._channels.difference_update(gone)
            ws = self._replayed_socket()
            if gone and ws is not None:
                try:
                    for batch in batches(gone):
                        await self._request("public/unsubscribe", {"channels": batch})
                except (CreditTimeout, DeribitError):
                    self._channels.update(gone)
                    raise
                except DeribitTransportError:
                    self._resync(ws)

    def _replayed_socket(self) -> ClientConnection | None:
        """The open socket whose set-up has sent the channel set, if any (lock held)."""
        ws = self._ws
        return ws if ws is not None and ws is self._replayed_on else None

    def _resync(self, ws: ClientConnection) -> None:
        """Deribit's idea of our channels is unknown now: a new socket replays the whole set."""
        if ws is self._ws:
            logger.warning("%s: channel change unanswered; reconnecting to resync", self.name)
            ws.transport.abort()

    async def authenticate(self, credentials: Credentials) -> Token:
        """Authenticate this socket with a key (kept for re-auth after reconnects).

        Exactly one `public/auth` goes out: a socket still being set up authenticates as part of
        its set-up, an open one now. A refused key raises once and is not kept; any refusal of
        it (a wrong key, or a transient one such as 12003 login_over_limit) ends this connection
        rather than being retried under backoff: the caller, a sign-in, answers it at once.
        """
        previous, self.credentials = self.credentials, credentials
        try:
            if not self.connected:
                self._signing_in = True
                try:
                    await self.wait_ready()
                finally:
                    self._signing_in = False
                if self.token is not None:
                    return self.token
            return await self._authenticate(priority=False)
        except DeribitError:
            self.credentials = previous
            raise

    async def close(self) -> None:
        """Close for good: pending and future calls fail with ConnectionClosed."""
        if self.closed:
            return
        self._set_state(ConnectionState.CLOSED)
        supervisor, self._supervisor = self._supervisor, None
        try:
            if supervisor is not None:
                await cancel_and_wait(supervisor)  # a cancelled caller stays cancelled
        finally:
            await self._drop_socket(ConnectionClosed("connection closed"))

    # -- supervision ------------------------------------------------------------------------

    async def _supervise(self) -> None:
        first = True
        while not self.closed:
            self._set_state(ConnectionState.CONNECTING if first else ConnectionState.RECONNECTING)
            if not first:
                self.reconnects += 1
            first = False
            ws = await self._open_socket()
            if ws is not None:
                lived = await self._serve_socket(ws)
                if self.closed:
                    return
                if lived >= self.backoff.stable_after:
                    self.backoff.reset()
                self._set_state(ConnectionState.RECONNECTING)
            await asyncio.sleep(self.backoff.next_delay())

    async def _open_socket(self) -> ClientConnection | None:
        try:
            return await connect(
                self.url,
                ping_interval=None,  # liveness is Deribit's JSON heartbeat, not WS pings
                open_timeout=self.request_timeout,
                close_timeout=2,
                max_size=2**24,
            )
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
            self._last_error = str(exc) or type(exc).__name__
            logger.warning("%s: connect to %s failed: %s", self.name, self.url, self._last_error)
            return None

    async def _serve_socket(self, ws: ClientConnection) -> float:
        """Set the socket up and read it until it dies; returns how long it was usable."""
        loop = asyncio.get_running_loop()
        self._ws = ws
        self._last_frame = loop.time()
        reader = asyncio.create_task(self._read(ws), name=f"{self.name}-reader")
        watchdog = asyncio.create_task(self._watch(ws), name=f"{self.name}-watchdog")
        connected_at = None
        try:
            try:
                await self._set_up()
            except DeribitError as exc:
                if self.credentials is not None and isinstance(exc, FATAL_AUTH_ERRORS):
                    # A wrong or revoked key: no retry can mend it, so say it once.
                    logger.error("%s: Deribit refused the key: %s", self.name, exc.reason)
                    self.failure = exc
                    self._set_state(ConnectionState.CLOSED)
                elif self._signing_in and exc is self._auth_refusal:
                    # A sign-in waits on this set-up: it answers the refusal, nobody retries it.
                    logger.warning("%s: Deribit refused the sign-in: %s", self.name, exc.reason)
                    self.failure = exc
                    self._set_state(ConnectionState.CLOSED)
                else:
                    self._last_error = str(exc)
                    logger.warning("%s: set-up failed: %s", self.name, exc)
                ws.transport.abort()
            except (DeribitTransportError, ValueError, TypeError, KeyError) as exc:
                self._last_error = str(exc) or type(exc).__name__
                logger.warning("%s: set-up failed: %s", self.name, self._last_error)
                ws.transport.abort()
            else:
                connected_at = loop.time()
                self._last_error = ""
                self._set_state(ConnectionState.CONNECTED)
                logger.info("%s: connected to %s", self.name, self.url)
            await asyncio.wait({reader})
        finally:
            watchdog.cancel()
            reader.cancel()
        lost = ConnectionClosed(str(self.failure)) if self.closed else ConnectionLost("lost")
        await self._drop_socket(lost)
        if connected_at is None:
            return 0.0
        if not self.closed:
            logger.warning("%s: connection lost; reconnecting", self.name)
        return loop.time() - connected_at

    async def _set_up(self) -> None:
        """What every fresh socket needs: heartbeat, auth, the channel set."""
        await self._request(
            "public/set_heartbeat", {"interval": number(self.heartbeat_interval)}, priority=True
        )
        self._auth_refusal = None
        if self.credentials is not None:
            try:
                await self._authenticate(priority=True)
            except DeribitError as refusal:
                self._auth_refusal = refusal
                raise
        async with self._channel_changes:
            if self._channels:
                await self._subscribe_now(sorted(self._channels), priority=True)
            self._replayed_on = self._ws

    async def _authenticate(self, *, priority: bool) -> Token:
        assert self.credentials is not None  # noqa: S101  # callers check
        loop = asyncio.get_running_loop()
        result = await self._request(
            "public/auth", self.credentials.auth_params(), priority=priority
        )
        self.token = Token.from_result(result, issued_at=loop.time())
        self._spawn(self._refresh_later(self.token), "token-refresh")
        return self.token

    async def _refresh_later(self, token: Token) -> None:
        """Refresh before expiry on this same socket (connection-scoped tokens live only here)."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, token.refresh_due - loop.time()))
        if self.token is not token or not self.connected:
            return
        try:
            result = await self._request(
                "public/auth",
                {"grant_type": "refresh_token", "refresh_token": token.refresh_token},
                priority=True,
            )
            self.token = Token.from_result(result, issued_at=loop.time())
            self._spawn(self._refresh_later(self.token), "token-refresh")
            logger.info("%s: token refreshed", self.name)
        except Unauthorized:
            try:
                await self._authenticate(priority=True)  # refresh token refused: use the key
            except DeribitError as error:
                logger.error("%s: re-authentication refused: %s", self.name, error.reason)
                if self._ws is not None:
                    self._ws.transport.abort()  # the set-up on a new socket says it for good
        except DeribitTransportError:
            pass  # the reconnect authenticates afresh

    async def _subscribe_now(self, channels: list[str], *, priority: bool) -> list[str]:
        acked: list[str] = []
        for batch in batches(channels):
            result = await self._request("public/subscribe", {"channels": batch}, priority=priority)
            acked.extend(result)
        refused = set(channels) - set(acked)
        if refused:
            self._channels.difference_update(refused)
            logger.warning(
                "%s: Deribit did not subscribe %s", self.name, ", ".join(sorted(refused))
            )
        return acked

    async def _drop_socket(self, error: Exception) -> None:
        ws, self._ws = self._ws, None
        self._replayed_on = None
        self.token = None  # connection-scoped tokens die with the socket
        for task in list(self._background):
            task.cancel()
        self._pending.fail_all(error)
        if ws is not None:
            ws.transport.abort()

    # -- the wire ---------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        params: dict[str, Any] | None,
        *,
        priority: bool = False,
        timeout: float | None = None,
    ) -> Any:
        await self.budget.acquire(method, priority=priority)
        ws = self._ws
        if ws is None:
            raise ConnectionLost(f"{method}: Deribit connection is down")
        params = dict(params or {})
        if method.startswith("private/") and self.token and "access_token" not in params:
            params["access_token"] = self.token.access_token
        request_id, future = self._pending.open()
        limit = self.request_timeout if timeout is None else timeout
        try:
            await ws.send(request_frame(request_id, method, params))
            async with asyncio.timeout(limit):
                return await future
        except TimeoutError:
            raise RequestTimeout(f"{method}: no answer from Deribit within {limit:g}s") from None
        except SocketClosed:
            raise ConnectionLost(f"{method}: Deribit connection lost") from None
        except TooManyRequests:
            await self.budget.drain()
            raise
        finally:
            self._pending.close(request_id)

    async def _read(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        try:
            with contextlib.suppress(SocketClosed):
                async for frame in ws:
                    self._last_frame = loop.time()
                    try:
                        message = json.loads(frame)
                    except ValueError:
                        logger.warning("%s: unparseable frame from Deribit", self.name)
                        continue
                    if isinstance(message, dict):
                        self._dispatch(message)
        finally:
            if self._ws is ws:
                # No answer can come now: a request waiting on this socket (the set-up's among
                # them, which nothing else would end) fails at once, not at its timeout.
                self._pending.fail_all(ConnectionLost("Deribit connection lost"))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if self._pending.answer(message):
            return
        method = message.get("method")
        params = message.get("params") or {}
        if method == "subscription":
            channel, data = str(params.get("channel")), params.get("data")
            for handler in list(self._notification_handlers):
                try:
                    handler(channel, data)
                except Exception:
                    logger.exception("%s: notification handler failed", self.name)
        elif method == "heartbeat":
            if params.get("type") == "test_request":
                self._spawn(self._answer_test_request(), "heartbeat")
        elif "error" in message:
            logger.warning("%s: Deribit error without id: %s", self.name, message["error"])

    async def _answer_test_request(self) -> None:
        with contextlib.suppress(DeribitTransportError, DeribitError):
            await self._request("public/test", {}, priority=True)

    async def _watch(self, ws: ClientConnection) -> None:
        """Abort a socket that has been silent for longer than the heartbeat allows."""
        loop = asyncio.get_running_loop()
        while True:
            silent_for = loop.time() - self._last_frame
            if silent_for > self.silence_timeout:
                logger.warning(
                    "%s: nothing from Deribit for %.1fs; treating the socket as dead",
                    self.name,
                    silent_for,
                )
                ws.transport.abort()
                return
            await asyncio.sleep(self.silence_timeout - silent_for + 0.05)

    # -- helpers ----------------------------------------------------------------------------

    def _spawn(self, coroutine: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(f"{self.name}-{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(self._log_failure)

    def _log_failure(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.warning("%s: %s failed: %s", self.name, task.get_name(), error)

    def _set_state(self, state: ConnectionState) -> None:
        if state is self.state:
            return
        self.state = state
        event, self._state_changed = self._state_changed, asyncio.Event()
        event.set()
        for handler in list(self._state_handlers):
            try:
                handler(state)
            except Exception:
                logger.exception("%s: state handler failed", self.name)

    def _closed_error(self) -> Exception:
        if isinstance(self.failure, DeribitError):
            return self.failure
        return ConnectionClosed(f"Deribit connection {self.name} is closed")
