"""The stream's response writer on its own: how it ends, and that it never hides a cancellation."""

import asyncio

from starlette.types import Message

from __tests__.helpers import eventually
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.streaming.response import write_events


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
