"""The HTTP response of an SSE stream, written from the request's own task.

Starlette's StreamingResponse runs each stream in a task group of two extra tasks (under ASGI 2.3,
which uvicorn speaks) and pulls through async generators with a timeout per wait: thousands of
open streams pay for that in memory and in CPU per event. Here the request task writes, a small
task watches for the client leaving, and pings come from the hub's sweep.
"""

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from cryptomarket.core.server import ABORT, DIRECT, ON_LOST, abort_connection
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.streaming.stream import Body, Stream

logger = logging.getLogger("cryptomarket.streaming")

# Set in the task of a response ended because its stream was dropped (see `quiet_dropped_streams`).
_dropped_here: ContextVar[bool] = ContextVar("cryptomarket_stream_dropped", default=False)

STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
}
STREAM_RAW_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    *((name.lower().encode(), value.encode()) for name, value in STREAM_HEADERS.items()),
]


class EventStreamResponse(Response):
    """The stream as a Response, for the documented FastAPI route; the served route calls
    `write_events` itself (streaming/endpoints.py)."""

    media_type = "text/event-stream"

    def __init__(self, hub: StreamHub, stream: Stream, opening: bytes) -> None:
        # No body and so no Content-Length: the events go out as a chunked body.
        self.status_code = 200
        self.background = None
        self.init_headers(STREAM_HEADERS)
        self.hub = hub
        self.stream = stream
        self.opening = opening  # what goes out first: retry, connected, replay, status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
        await write_events(
            self.hub,
            self.stream,
            self.opening,
            start,
            receive=receive,
            send=send,
            connection=connection_of(scope, send),
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """What the server lets a stream do with its connection beyond ASGI (core/server.py)."""

    abort: Callable[[], None] | None = None  # reset it now
    body: Callable[[], Body | None] | None = None  # its started body: frames written at once
    # Call this once it is lost (None: no longer; a kept-alive connection outlives a stream).
    on_lost: Callable[[Callable[[], None] | None], None] | None = None


NOTHING_MORE = Connection()  # a server without our extensions, and no transport found


def connection_of(scope: Scope, send: Send) -> Connection:
    """The extensions our server adds (core/server.py); under another server, uvicorn's `send`
    (a method of its request cycle, which holds the transport) to reset the connection, else
    nothing (the server's sweep of closed connections that cannot drain frees it later)."""
    extensions = scope.get("extensions", {})
    abort: Callable[[], None] | None = extensions.get(ABORT)
    if abort is None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if isinstance(transport, asyncio.Transport):
            abort = partial(abort_connection, transport)
    return Connection(abort, extensions.get(DIRECT), extensions.get(ON_LOST))


async def write_events(
    hub: StreamHub,
    stream: Stream,
    opening: bytes,
    start: Message,
    *,
    receive: Receive,
    send: Send,
    connection: Connection = NOTHING_MORE,
) -> None:
    """Send the response start, the opening, then every chunk the stream has, until it ends.
    A dropped stream's connection is reset (`connection.abort`); a client that left ends the
    stream at once: the server says so (`connection.on_lost`), else a task waits for it."""
    stream.writer = asyncio.current_task()
    watcher: asyncio.Task[None] | None = None
    if connection.on_lost is not None:
        connection.on_lost(stream.close)
    else:
        watcher = asyncio.create_task(_close_on_disconnect(receive, stream))
    try:
        await send(start)
        if connection.body is not None:
            stream.attach(connection.body())
        chunk: bytes | None = opening
        del start, opening  # held for the stream's whole life otherwise
        while chunk is not None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            chunk = await stream.next_chunk()
        if not stream.dropped:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            _dropped(connection.abort)
    except asyncio.CancelledError:
        if not stream.dropped:
            raise
        # Dropped while its writer waited on a client that does not read: end the response
        # here, and reset the connection (a close would wait for the client to drain it).
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        _dropped(connection.abort)
    finally:
        hub.close(stream)
        stream.writer = None
        if watcher is not None:
            await _stop(watcher)
        elif connection.on_lost is not None:
            connection.on_lost(None)  # the connection may serve more: it holds no dead stream


def _dropped(abort: Callable[[], None] | None) -> None:
    _dropped_here.set(True)
    if abort is not None:
        abort()


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a child task and wait until it ends. asyncio.wait never raises the child's
    cancellation, while a cancellation of the caller itself goes on up from here."""
    task.cancel()
    await asyncio.wait((task,))
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.warning("the disconnect watcher of a stream failed: %r", error)


async def _close_on_disconnect(receive: Receive, stream: Stream) -> None:
    """The client went away: end the stream at once, so its state is freed now."""
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.close()


class _QuietDroppedStreams(logging.Filter):
    """uvicorn reports a response that ended before completing as an error; for a stream
    dropped on purpose the hub has already logged why, so that report is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _dropped_here.get()


def quiet_dropped_streams() -> None:
    server_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDroppedStreams) for f in server_log.filters):
        server_log.addFilter(_QuietDroppedStreams())
