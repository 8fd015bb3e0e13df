"""The parts our uvicorn protocol puts in place of uvicorn's own: they must behave as those do."""

import asyncio
import gc
from typing import Any

from starlette.responses import PlainTextResponse

from __tests__.helpers import eventually
from __tests__.servers import free_port
from cryptomarket.core.server import (
    ON_LOST,
    TICK_SECONDS,
    BoundedSendBufferProtocol,
    LeanEvent,
    LeanFlowControl,
    Pipeline,
    make_server,
)


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing


async def test_the_event_wakes_every_waiter_once_set_and_waits_again_once_cleared() -> None:
    event = LeanEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(waiter.done() for waiter in waiters)
    event.set()
    assert await asyncio.gather(*waiters) == [True, True]
    assert await event.wait()  # set: no wait at all
    event.clear()
    again = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not again.done()
    again.cancel()  # a waiter that gives up leaves the event usable
    event.set()
    assert await event.wait()


async def test_drain_waits_while_writing_is_paused_and_returns_once_resumed() -> None:
    flow = LeanFlowControl(Transport())  # type: ignore[arg-type]
    await flow.drain()  # not paused: at once
    flow.pause_writing()
    draining = asyncio.create_task(flow.drain())
    await asyncio.sleep(0)
    assert not draining.done()
    flow.resume_writing()
    await draining


def test_the_pipeline_hands_requests_on_in_arrival_order() -> None:
    pipeline = Pipeline()
    assert not pipeline
    for request in ("first", "second", "third"):
        pipeline.appendleft(request)  # as uvicorn queues a pipelined request
    assert [pipeline.pop() for _ in range(3)] == ["first", "second", "third"]
    assert not pipeline


def test_a_direct_body_writes_whole_chunks_and_refuses_while_paused_or_closing() -> None:
    transport = Transport()
    body = flow = LeanFlowControl(transport)  # type: ignore[arg-type]
    frame = b"event: price\ndata: {}\n\n"
    assert body.write(frame)
    assert body.write(b"")  # nothing: no chunk (an empty one would end the body)
    assert transport.written == [b"17\r\n" + frame + b"\r\n"]
    flow.pause_writing()
    assert not body.write(frame)
    flow.resume_writing()
    transport.closing = True
    assert not body.write(frame)
    assert len(transport.written) == 1


async def test_the_server_ticks_once_a_second_and_stops_at_once_when_asked() -> None:
    """Its main loop sleeps a whole second between ticks (each tick wakes an idle process),
    yet an exit asked for mid-tick is acted on at once, not at the next tick."""
    server = make_server(PlainTextResponse("ok"), "127.0.0.1", free_port(), lifespan="off")
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the server started")
    loop = asyncio.get_running_loop()
    asked = loop.time()
    server.should_exit = True
    await task
    assert TICK_SECONDS >= 1
    assert loop.time() - asked < TICK_SECONDS / 2


async def test_a_streaming_connection_keeps_its_state_in_slots_not_an_instance_dict() -> None:
    """uvicorn's protocol kept 30 attributes in a 1.5 KiB dict per connection; ours has a slot
    for each. An attribute a newer uvicorn adds would land in a dict again: this says so."""
    holding = asyncio.Event()

    async def stream(scope: dict[str, object], receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await holding.wait()

    port = free_port()
    server = make_server(stream, "127.0.0.1", port, lifespan="off")
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the server started")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        assert b"data: 1" in await reader.readuntil(b"data: 1")
        (connection,) = server.server_state.connections
        assert vars(connection) == {}
    finally:
        holding.set()
        writer.close()
        server.should_exit = True
        await task


async def test_a_closed_connection_is_freed_at_once_not_at_the_next_full_collection() -> None:
    """Its protocol, request cycle and scope referred to each other: thousands of closed ones
    waited for a full collection (rare) after a reconnect storm, and memory grew each storm."""

    async def stream(scope: dict[str, Any], receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        lost = asyncio.Event()
        scope["extensions"][ON_LOST](lost.set)
        await lost.wait()

    def protocols() -> int:
        return sum(type(o) is BoundedSendBufferProtocol for o in gc.get_objects())

    port = free_port()
    server = make_server(stream, "127.0.0.1", port, lifespan="off")
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the server started")
    gc.disable()  # what is freed now is freed by its last reference going, not by a collection
    try:
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for reader, writer in clients:
            writer.write(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
            await reader.readuntil(b"data: 1")
        assert protocols() == 20
        for _, writer in clients:
            writer.close()
        await eventually(lambda: not server.server_state.connections, what="all of them lost")
        await eventually(lambda: protocols() == 0, what="every closed connection freed")
    finally:
        gc.enable()
        server.should_exit = True
        await task


async def test_a_callback_registered_after_the_connection_was_lost_is_called_at_once() -> None:
    """A client may leave while its stream is still opening (reading the store): the stream
    registers for the loss only then, and must still end, not wait for a loss already past."""
    client_gone = asyncio.Event()
    told = asyncio.Event()

    async def stream(scope: dict[str, Any], receive: object, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await client_gone.wait()
        scope["extensions"][ON_LOST](told.set)
        await told.wait()

    port = free_port()
    server = make_server(stream, "127.0.0.1", port, lifespan="off")
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started, what="the server started")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nHost: test\r\n\r\n")
        await reader.readuntil(b"data: 1")
        writer.close()
        await eventually(lambda: not server.server_state.connections, what="the connection lost")
        client_gone.set()
        async with asyncio.timeout(5):
            await told.wait()
    finally:
        server.should_exit = True
        await task
