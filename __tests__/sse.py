"""A strict Server-Sent Events reader for the tests, after the WHATWG event-stream rules.

It parses what a browser's EventSource would (any of CRLF, LF, CR ends a line; `:` starts a
comment; `data` lines join with LF; `id` without NUL sets the last event id; `retry` takes only
digits; an event is dispatched at a blank line) and, on top, checks this service's own promises:
every `data` is one line of JSON and every event is named.
"""

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    data: Any
    id: str | None
    raw_data: str


@dataclass
class SSEParser:
    events: list[Event] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    last_event_id: str = ""
    retry_ms: int | None = None
    _pending: str = ""
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _id_seen: str | None = None
    _first: bool = True

    def feed(self, text: str) -> list[Event]:
        """Feed decoded text; returns the events completed by it."""
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        buffer = self._pending + text
        lines = re.split(r"\r\n|\n|\r", buffer)
        # A trailing CR may be the first half of CRLF: keep it for the next chunk.
        self._pending = lines.pop()
        if buffer.endswith("\r"):
            self._pending = lines.pop() + "\r" if lines else "\r"
        before = len(self.events)
        for line in lines:
            self._line(line)
        return self.events[before:]

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            assert "\0" not in value
            self.last_event_id = value
            self._id_seen = value
        elif name == "retry":
            assert value.isdigit(), f"retry must be digits, got {value!r}"
            self.retry_ms = int(value)
        else:
            raise AssertionError(f"unknown field {name!r} in {line!r}")

    def _dispatch(self) -> None:
        if not self._data:
            self._event, self._id_seen = "", None
            return
        assert len(self._data) == 1, f"expected one data line, got {self._data!r}"
        assert self._event, "every event of this service is named"
        raw = "\n".join(self._data)
        self.events.append(Event(self._event, json.loads(raw), self._id_seen, raw))
        self._data, self._event, self._id_seen = [], "", None


@dataclass
class Stream:
    """An open event stream, read in the background so a timed-out wait never breaks it."""

    response: httpx.Response
    parser: SSEParser
    _queue: "asyncio.Queue[Event | None]"

    async def next_event(self, timeout: float = 10.0) -> Event:
        async with asyncio.timeout(timeout):
            event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)
            raise EOFError("the server ended the stream")
        return event

    async def until(self, kind: str, timeout: float = 10.0, **match: Any) -> Event:
        """The next event of a kind (whose data has the given values); others are skipped."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event(timeout)
                if event.event == kind and all(event.data.get(k) == v for k, v in match.items()):
                    return event

    async def events_for(self, seconds: float) -> list[Event]:
        """Every event that arrives within `seconds`."""
        collected: list[Event] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            try:
                collected.append(await self.next_event(left))
            except TimeoutError:
                break
        return collected


@asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, path: str = "/api/v2/sse/connection", **kwargs: Any
) -> AsyncIterator[Stream]:
    """Open an SSE stream (the caller checks the status); events are parsed as they arrive."""
    timeout = httpx.Timeout(10, read=60)
    async with client.stream("GET", path, timeout=timeout, **kwargs) as response:
        parser = SSEParser()
        queue: asyncio.Queue[Event | None] = asyncio.Queue()

        async def read() -> None:
            try:
                if response.status_code == 200:
                    async for text in response.aiter_text():
                        for event in parser.feed(text):
                            queue.put_nowait(event)
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            yield Stream(response, parser, queue)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
