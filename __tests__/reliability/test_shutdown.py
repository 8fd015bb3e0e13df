"""SIGTERM to `cryptomarket serve` holding 1,000 open streams (issue 6, item 1).

The server runs as a user runs it (a subprocess, embedded mode, SQLite, the in-test simulator);
1,000 streams of two users are read by raw sockets, so what the server sends at the end is seen
byte for byte. After SIGTERM every client must get a clean end of its chunked body (the
terminating `0\\r\\n\\r\\n`) after a complete last event, the ticks buffered for the database must
be written, and the process must exit within 10 s.
"""

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from __tests__.helpers import eventually, eventually_async
from __tests__.servers import free_port
from cryptomarket.deribit.simulator import Simulator

STREAMS = 1_000
USERS = {"alice": "sim-alice", "bob": "sim-bob"}
EXIT_BOUND = 10.0
PRICE = re.compile(rb'"timestamp":(\d+)')


@dataclass
class RawStream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    received: bytearray = field(default_factory=bytearray)
    eof: bool = False

    async def read_until_eof(self) -> None:
        while chunk := await self.reader.read(65536):
            self.received += chunk
        self.eof = True

    def newest_price(self) -> int:
        return max((int(m) for m in PRICE.findall(bytes(self.received))), default=0)


async def open_raw(port: int, token: str) -> RawStream:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            "GET /api/v2/sse/connection HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    stream = RawStream(reader, writer)
    async with asyncio.timeout(60):
        while b"event: connected" not in stream.received:
            chunk = await reader.read(65536)
            assert chunk, bytes(stream.received[:200])
            stream.received += chunk
    assert stream.received.startswith(b"HTTP/1.1 200"), bytes(stream.received[:200])
    assert b"transfer-encoding: chunked" in stream.received.lower()
    return stream


def body_of(raw: bytes) -> tuple[bytes, bool]:
    """The decoded chunked body, and whether it ended with the terminating zero-size chunk."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = bytearray()
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return bytes(body), False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return bytes(body), rest == b"\r\n"
        body += rest[:size]
        rest = rest[size + 2 :]
    return bytes(body), False


async def test_sigterm_with_a_thousand_open_streams(
    simulator_factory: object, tmp_path: Path
) -> None:
    simulator: Simulator = await simulator_factory(tick_interval=0.1)  # type: ignore[operator]
    database = tmp_path / "serve.sqlite3"
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "DATABASE_URL": f"sqlite:///{database}",
        "DERIBIT_WS_URL": simulator.url,
        "PROJECT_MODE": "testing",
        "DERIBIT_HEARTBEAT_INTERVAL": "1",
        "TRACKED_TICKERS": "btc_usd",
        "SSE_MAX_STREAMS_PER_USER": str(STREAMS // len(USERS)),
        "SSE_MAX_STREAMS_PER_ACCOUNT": str(STREAMS // len(USERS)),  # one account per user
        "SSE_OPEN_BURST": str(STREAMS),  # all opened at once, on purpose
        "LOG_LEVEL": "WARNING",
    }
    with (tmp_path / "serve.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cryptomarket",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    streams: list[RawStream] = []
    readers: list[asyncio.Task[None]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:

            async def up() -> bool:
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/health")).status_code == 200
                return False

            await eventually_async(up, timeout=30, what="serve answering /health")
            tokens = []
            for user, client_id in USERS.items():
                signed = await client.post(
                    "/api/v1/sessions",
                    json={
                        "user_id": user,
                        "client_id": client_id,
                        "client_secret": f"{client_id}-secret",
                    },
                )
                assert signed.status_code == 201, signed.text
                token = signed.json()["token"]
                tokens.append(token)
                subscribed = await client.get(
                    f"/api/v1/market/{user}/create_order/btc_usd?timer=0",
                    headers={"Authorization": f"Bearer {token}"},
                )
                assert subscribed.status_code in (200, 201), subscribed.text

        gate = asyncio.Semaphore(100)

        async def one(i: int) -> RawStream:
            async with gate:
                return await open_raw(port, tokens[i % len(tokens)])

        streams = list(await asyncio.gather(*(one(i) for i in range(STREAMS))))
        readers = [asyncio.create_task(s.read_until_eof()) for s in streams]
        # Every stream is live: each has a price of a tick made after the last one opened.
        opened_at = simulator.history("btc_usd")[-1][0]
        await eventually(
            lambda: all(s.newest_price() > opened_at for s in streams),
            timeout=30,
            what="a fresh price on every stream",
        )

        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        async with asyncio.timeout(EXIT_BOUND + 5):
            code = await process.wait()
        exited_in = time.monotonic() - signalled
        assert exited_in < EXIT_BOUND, f"exited {exited_in:.1f}s after SIGTERM"
        # uvicorn re-raises the signal once it has shut down, so the exit status says SIGTERM.
        assert code in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()[-2000:]

        async with asyncio.timeout(5):
            await asyncio.gather(*readers)
        unclean = []
        for stream in streams:
            body, terminated = body_of(bytes(stream.received))
            if not terminated or not body.endswith(b"\n\n"):
                unclean.append(bytes(stream.received[-80:]))
        assert unclean == [], f"{len(unclean)} streams did not end cleanly, e.g. {unclean[:2]}"

        # Every tick any client saw was written before the process exited, none missing.
        newest = max(s.newest_price() for s in streams)
        with sqlite3.connect(database) as connection:
            stored = [
                ts
                for (ts,) in connection.execute(
                    "SELECT timestamp FROM crypto_price_tickers WHERE ticker = 'btc_usd' "
                    "ORDER BY timestamp"
                )
            ]
        assert stored and stored[-1] >= newest
        made = [ts for ts, _ in simulator.history("btc_usd") if stored[0] <= ts <= newest]
        assert sorted(set(made) - set(stored)) == []
    finally:
        for task in readers:
            task.cancel()
        for stream in streams:
            stream.writer.close()
        if process.returncode is None:
            process.kill()
            await process.wait()
