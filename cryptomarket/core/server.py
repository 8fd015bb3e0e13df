"""The uvicorn server this service runs on, with its socket settings.

A response that ends before it completes (a stream dropped for not reading) leaves uvicorn closing
a transport that waits to drain to a client that never reads: the descriptor and its buffers would
stay for good. Each request's scope carries ABORT, to reset its connection at once; and the server
aborts, as a fallback, every connection still closing with unsent data after DRAIN_GRACE seconds.
"""

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# A stream client that stops reading must be noticed while it is a few hundred KB behind, not
# after the kernel has buffered megabytes for it (autotuning grows a send buffer up to 4 MB).
SEND_BUFFER_BYTES = 256 * 1024
# The request line and headers of one request, at most (nginx's default allows 4 x 8 KB): the
# parser uvicorn uses here has no bound of its own, so a header flood would be held in memory.
MAX_REQUEST_HEAD_BYTES = 64 * 1024
# The scope's ASGI extensions: a callable that resets the request's connection now; one that
# gives, once the response has started, where its chunked body's chunks can go at once (or
# None); and one that registers what to call once when the connection is lost (a stream then
# needs no task waiting on `receive` for the disconnect).
ABORT = "cryptomarket.abort"
DIRECT = "cryptomarket.direct"
ON_LOST = "cryptomarket.on_lost"
# A closed connection that has not drained its unsent data this long is aborted (seconds).
DRAIN_GRACE = 30.0
# Seconds between two looks at the closing connections (a look walks every connection), at most
# a third of the grace: an undrained one goes within DRAIN_GRACE plus two looks of closing.
DRAIN_SWEEP_EVERY = 10.0
TICK_SECONDS = 1.0  # the main loop's tick
UVICORN_TICKS_PER_TICK = round(TICK_SECONDS / 0.1)  # uvicorn counts ticks of 0.1 s

logger = logging.getLogger("cryptomarket.server")


def abort_connection(transport: asyncio.Transport) -> None:
    """Reset the connection: the descriptor and every buffer go now (a plain close would wait
    for the client to read what the kernel still holds), and the client sees an RST."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already gone: abort() still drops the transport
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _LastChunk:
    """The framing of the last bytes framed. A fan-out writes the same bytes object to every
    stream in a row, so each frame is framed once, not once per stream."""

    __slots__ = ("chunk", "data")

    def __init__(self) -> None:
        self.data = self.chunk = b""

    def of(self, data: bytes) -> bytes:
        """`data` (not empty) as one chunk."""
        if self.data is not data:
            self.data = data
            self.chunk = b"%x\r\n%b\r\n" % (len(data), data)
        return self.chunk


_chunk_of = _LastChunk().of


class LeanEvent:
    """The asyncio.Event a request cycle of uvicorn waits on, with no deque until waited on."""

    __slots__ = ("_set", "_waiter")

    def __init__(self) -> None:
        self._set = False
        self._waiter: asyncio.Future[None] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        while not self._set:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        return True


class LeanFlowControl(FlowControl):
    """uvicorn's flow control of one connection, waiting on a LeanEvent (no deque until a drain
    waits), in slots (no instance dict), and the connection's direct body: `write` sends chunks
    of a started chunked response body straight to it, from any code on the loop. A stream's
    frames go out from the hub's fan-out as it runs, with no task woken and no ASGI message
    built per frame, and a fan-out touches one object per connection, not two. The ASGI `send`
    still starts and ends the response, and sends what could not go out here, in order
    (streaming/stream.py)."""

    __slots__ = ("_transport", "_writable", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:  # no super(): not its event
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._writable = LeanEvent()
        self._writable.set()

    async def drain(self) -> None:
        await self._writable.wait()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._writable.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._writable.set()

    def write(self, data: bytes) -> bool:
        """Send `data` as one chunk now; False, and nothing sent, when the connection cannot take
        it now (its client reads slower than it gets: writing is paused; or it closes)."""
        if self.write_paused or self._transport.is_closing():
            return False
        if data:  # an empty chunk would end the body
            self._transport.write(_chunk_of(data))
        return True


class Pipeline(list[Any]):
    """The queue of pipelined requests uvicorn keeps per connection, as a list (a deque is
    760 bytes when empty): uvicorn only appends on the left, pops on the right and tests it."""

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)


# What uvicorn 0.54's HttpToolsProtocol keeps per connection (its __init__, connection_made and
# request callbacks), given slots below.
UVICORN_PROTOCOL_ATTRIBUTES = (
    "access_log",
    "access_logger",
    "app",
    "app_state",
    "asgi_version",
    "client",
    "config",
    "connections",
    "cycle",
    "expect_100_continue",
    "flow",
    "headers",
    "limit_concurrency",
    "logger",
    "loop",
    "parser",
    "pipeline",
    "root_path",
    "scheme",
    "scope",
    "server",
    "server_state",
    "tasks",
    "timeout_keep_alive",
    "timeout_keep_alive_task",
    "transport",
    "url",
    "ws_protocol_class",
)


class RequestHeadTooLarge(Exception):
    """Raised inside the parser's callback: uvicorn answers 400 and closes the connection."""


class BoundedSendBufferProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with the bounds above, the extensions, and less kept per
    connection: ten thousand streams each hold one for hours, and an asyncio.Event or a deque
    costs 0.8-1 KiB even while unused (see `LeanFlowControl`, `LeanEvent`, `Pipeline`). Its
    state is in slots: uvicorn's 30 attributes made a 1.5 KiB instance dict per connection.
    A name uvicorn may add later lands in an instance dict again, so nothing breaks."""

    __slots__ = (
        *UVICORN_PROTOCOL_ATTRIBUTES,
        "head_bytes",  # ours: the request head's size so far
        "lost",  # ours: the connection is gone
        "on_lost",  # ours: called once when the connection is lost
    )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        super().connection_made(transport)
        self.flow = LeanFlowControl(transport)
        self.pipeline = Pipeline()  # type: ignore[assignment]
        self.on_lost: Callable[[], None] | None = None
        self.lost = False

    def on_message_begin(self) -> None:
        self.head_bytes = 0
        super().on_message_begin()
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[ABORT] = self.abort_connection
        extensions[DIRECT] = self.direct_body
        extensions[ON_LOST] = self.call_on_lost

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.message_event = LeanEvent()  # type: ignore[assignment]

    def call_on_lost(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` once when the connection is lost, at once if it already is (a client
        that left while its stream was opening); None: no longer."""
        if callback is not None and self.lost:
            callback()
            return
        self.on_lost = callback

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        super().connection_lost(exc)
        lost, self.on_lost = self.on_lost, None
        if lost is not None:
            lost()
        # The request cycle (its response callback) and the scope (our extensions) refer back
        # to this protocol: let go of them, so a closed connection is freed as soon as its
        # request task ends, not at the next full collection (rare here: thousands of closed
        # connections piled up in a reconnect storm). Nothing reads them once it is lost.
        self.cycle = None  # type: ignore[assignment]
        self.scope = None  # type: ignore[assignment]

    def abort_connection(self) -> None:
        abort_connection(self.transport)

    def direct_body(self) -> LeanFlowControl | None:
        """Where the current response's chunks can go at once (its connection's flow control),
        once it started with a chunked body."""
        cycle = self.cycle
        if cycle is None or not cycle.response_started or not cycle.chunked_encoding:
            return None
        return self.flow if isinstance(self.flow, LeanFlowControl) else None

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count(self, size: int) -> None:
        self.head_bytes = getattr(self, "head_bytes", 0) + size
        if self.head_bytes > MAX_REQUEST_HEAD_BYTES:
            raise RequestHeadTooLarge(
                f"request line and headers over {MAX_REQUEST_HEAD_BYTES} bytes"
            )


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which also aborts closed connections that cannot drain (see above).

    Its main loop ticks once a second, not ten times (each tick wakes the loop for nothing but
    the date header and the exit flag): setting `should_exit` wakes it at once instead.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._exit_asked: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        super().__init__(config)
        self._closing_since: dict[Any, float] = {}
        self._last_sweep = 0.0

    @property  # uvicorn keeps a plain attribute: this one also wakes the main loop
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        if value and self._exit_asked is not None:
            loop, event = self._exit_asked
            loop.call_soon_threadsafe(event.set)  # from a signal handler or another thread too

    async def main_loop(self) -> None:
        event = asyncio.Event()
        self._exit_asked = asyncio.get_running_loop(), event
        try:
            counter = 0
            while not await self.on_tick(counter):
                counter = (counter + UVICORN_TICKS_PER_TICK) % 864_000
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(TICK_SECONDS):
                        await event.wait()
        finally:
            self._exit_asked = None  # its loop may close: a later exit asked wakes nothing

    async def on_tick(self, counter: int) -> bool:
        now = time.monotonic()
        if now - self._last_sweep >= min(DRAIN_SWEEP_EVERY, DRAIN_GRACE / 3):
            self._last_sweep = now
            self.abort_undrained(now)
        return await super().on_tick(counter)

    def abort_undrained(self, now: float) -> None:
        closing: dict[Any, float] = {}
        for connection in self.server_state.connections:
            transport = getattr(connection, "transport", None)
            if transport is None or not transport.is_closing():
                continue
            if not transport.get_write_buffer_size():
                continue  # closing with nothing left to send: it goes by itself
            since = self._closing_since.get(connection, now)
            if now - since >= DRAIN_GRACE:
                logger.warning(
                    "aborted a connection that did not read its last %d bytes",
                    transport.get_write_buffer_size(),
                )
                abort_connection(transport)
            else:
                closing[connection] = since
        self._closing_since = closing


def make_server(app: Any, host: str, port: int, **options: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=BoundedSendBufferProtocol,
        log_config=None,  # ours: stdout, secrets masked
        server_header=False,
        timeout_graceful_shutdown=10,
        **options,
    )
    return DrainingServer(config)
