"""The stream's response writer on its own: how it ends, and that it never hides a cancellation."""

import asyncio

from starlette.types import Message

from __tests__.helpers import eventually
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.streaming.response import Connection, write_events


async def test_a_cancellation_while_the_writer_waits_for_its_watcher_is_not_swallowed() -> None:
    hub = StreamHub(max_streams=10, max_per_user=10)
    stream = hub.open("alice", 0)
    sent: list[Message] = []
    watcher_cancelled = asyncio.Event()
    let_watcher_end = asyncio.Event()

    async def receive() -> Message:
        try:
            await asyncio.Event().wait()  # the client never leaves
        except asyncio.CancelledError:
            watcher_cancelled.set()
            await let_watcher_end.wait()  # its clean-up takes a moment
            raise
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    start = {"type": "http.response.start", "status": 200, "headers": []}
    writer = asyncio.create_task(
        write_events(hub, stream, b"opening", start, receive=receive, send=send)
    )
    await eventually(lambda: len(sent) == 2, what="the opening sent")
    stream.close()  # the stream ends: the writer stops its watcher and waits for it
    await watcher_cancelled.wait()
    writer.cancel()  # the server cancels the request's task meanwhile
    let_watcher_end.set()
    await asyncio.wait((writer,))
    assert writer.cancelled(), "the writer's own cancellation was swallowed"
    assert sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert hub.open_streams == 0


class Wire:
    """A connection whose body takes frames at once unless its client is behind (`paused`)."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.paused = False

    def write(self, data: bytes) -> bool:
        if self.paused:
            return False
        self.data.append(data)
        return True

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body" and message["body"]:
            self.data.append(message["body"])


async def test_frames_go_out_at_once_and_in_order_across_a_client_falling_behind() -> None:
    hub = StreamHub(max_streams=10, max_per_user=10)
    stream = hub.open("alice", 0)
    wire = Wire()
    start = {"type": "http.response.start", "status": 200, "headers": []}
    writer = asyncio.create_task(
        write_events(
            hub,
            stream,
            b"opening;",
            start,
            receive=lambda: asyncio.Event().wait(),  # type: ignore[arg-type, return-value]
            send=wire.send,
            connection=Connection(body=lambda: wire),
        )
    )
    await eventually(lambda: wire.data == [b"opening;"], what="the opening sent")
    await asyncio.sleep(0)  # the writer waits with nothing buffered
    stream.push(b"1;")
    assert wire.data[-1] == b"1;", "an idle stream's frame waits for a task instead of going out"
    wire.paused = True  # the client falls behind: what follows waits for the writer
    stream.push(b"2;")
    wire.paused = False
    stream.push(b"3;")  # the body could take it now, but 2 must go first
    assert wire.data[-1] == b"1;"
    await eventually(lambda: b"".join(wire.data) == b"opening;1;2;3;", what="2 and 3 sent")
    await asyncio.sleep(0)
    stream.push(b"4;")
    assert wire.data[-1] == b"4;", "frames did not go out at once again once caught up"
    assert b"".join(wire.data) == b"opening;1;2;3;4;"
    stream.close()
    await writer
