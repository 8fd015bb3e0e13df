"""Soak: N SSE streams with connection churn against `cryptomarket serve` for M minutes.

`cryptomarket simulate --tick-interval 0.1` ticks every index 10 times a second; `cryptomarket
serve` (embedded mode, SQLite) ingests btc_usd and streams every tick (timer=0) to N clients held
by this process (raw asyncio sockets). Every minute, `--churn` of the streams (10 % by default),
spread evenly over the minute, close and reconnect; every `--storm-every` minutes (3) all of them
do at once, as every browser does after a restart or a deploy. A client reconnects as a browser's
EventSource does: with Last-Event-ID (the server replays what it missed), and after Retry-After
when an open is refused over the opens limit (429). Every `--sample` seconds the
server's RSS and open file descriptors are read (psutil), and the latency (receipt - Deribit
timestamp) of the prices received since the last sample is summarised (live ones: a replayed
tick is as old as the client's absence).

Event-loop stalls are measured inside the server (cryptomarket/core/loop_monitor.py: a task that
asks to wake every 50 ms logs "event loop stalled for N ms" when it wakes more than 100 ms late);
this script counts those lines in the server's log. A /health probe from outside would mix in this
process's own loop, the TCP path and the request's handling, and would see only stalls that
happen to overlap a probe.

Delivery: a direct subscriber of the simulator records every btc_usd tick. For each stream
connection, the ticks made between its first and its last price must all have arrived; delivery is
received / expected over all connections.

`--ticker BTC-PERPETUAL` soaks an instrument instead: its `ticker.BTC-PERPETUAL.100ms` channel
updates up to ten times a second (the simulator's `--instrument-interval`, 0.1 s), each update a
frame of ~600 bytes with the perpetual's fields, to every stream.

Writes bench/results/soak.md (markdown, machine and command beside the figures) and
bench/results/soak.png (latency p50/p99 and RSS over time); an instrument's run writes
soak-instrument.md and soak-instrument.png.
Run: `make soak` (10 minutes, 2,000 streams of btc_usd, then 1,000 of BTC-PERPETUAL) or
`python -m bench.soak --streams 200 --minutes 2 [--ticker BTC-PERPETUAL] [--tracemalloc DIR]`
(`--tracemalloc`: the server runs under bench/tracemalloc_run.py, a heap snapshot a minute; compare
them with `python -m bench.tracemalloc_run --compare DIR`; its RSS and latency then say nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from websockets.asyncio.client import connect as ws_connect

from bench import charts
from bench.common import command_line, machine, markdown_table, percentile
from bench.sse_common import ROOT, Child, free_port, raise_nofile, spawn, wait_port
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.kinds import channel_of

HOST = "127.0.0.1"
TRACKED = "btc_usd"
PER_USER = 1000  # SSE_MAX_STREAMS_PER_USER's maximum
RESULTS = Path(__file__).parent / "results"
PRICE = re.compile(rb'"timestamp":(\d+)')


@dataclass
class Connection:
    """One stream connection's life: the distinct tick timestamps it got.

    In an array, not a list: a soak gathers millions, and a list of them made every full garbage
    collection of this process walk them all, a pause growing with the run that showed as the
    servers' latency (p99 up by ~40 ms a minute, every 20 s)."""

    stamps: array[int] = field(default_factory=lambda: array("q"))


@dataclass
class Sample:
    at: float  # seconds since the start
    rss_mb: float
    fds: int
    streams: int
    p50_ms: float
    p99_ms: float


class Client:
    """A stream that reconnects when told to, as a browser's EventSource does: with the id of the
    last event it got (Last-Event-ID), and after Retry-After when an open is refused (429). One
    Connection per life."""

    def __init__(self, port: int, token: str, ticker: str, latencies: array[float]) -> None:
        self.port = port
        self.token = token
        self.ticker = ticker
        self.latencies = latencies
        self.lives: list[Connection] = []
        self.task: asyncio.Task[None] | None = None
        self.failures = 0  # streams that failed or that the server ended
        self.refused = 0  # opens refused over a limit, tried again after their Retry-After
        self.last = 0  # timestamp of the last price: the event id resumed from

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def churn(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.start()

    async def _run(self) -> None:
        while (retry_after := await self._life()) is not None:
            self.refused += 1
            await asyncio.sleep(retry_after)

    async def _life(self) -> float | None:
        """One connection, until it ends; seconds to wait before trying again when refused."""
        life = Connection()
        self.lives.append(life)
        opened_ms = time.time() * 1000  # ticks older are the replay's: late by design, not slow
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port)
        except OSError:
            self.failures += 1
            return None
        resume = f"Last-Event-ID: {self.ticker}:{self.last}\r\n" if self.last else ""
        try:
            writer.write(
                (
                    f"GET /api/v2/sse/connection HTTP/1.1\r\nHost: {HOST}\r\n"
                    f"Authorization: Bearer {self.token}\r\n{resume}\r\n"
                ).encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status == b"429":
                wait = re.search(rb"(?i)\r\nretry-after: *(\d+)", head)
                return float(wait.group(1)) if wait else 1.0
            if status != b"200":
                self.failures += 1
                return None
            tail = b""
            while chunk := await reader.read(65536):
                now_ms = time.time() * 1000
                text = tail + chunk
                cut = text.rfind(b"\n")
                tail = text[cut + 1 :]
                for match in PRICE.finditer(text[: cut + 1]):
                    stamp = int(match.group(1))
                    if stamp > self.last:
                        self.last = stamp
                        life.stamps.append(stamp)
                        if stamp >= opened_ms:
                            self.latencies.append(now_ms - stamp)
            self.failures += 1  # the server ended it: not expected in a soak
        except (OSError, asyncio.IncompleteReadError):
            self.failures += 1
        finally:
            writer.close()
        return None


async def reference_ticks(url: str, ticker: str, out: list[int], ready: asyncio.Event) -> None:
    """Every tick of the ticker the simulator sends, straight from it."""
    async with ws_connect(url) as ws:
        request = {"jsonrpc": "2.0", "id": 1, "method": "public/subscribe"}
        await ws.send(json.dumps({**request, "params": {"channels": [channel_of(ticker)]}}))
        ready.set()
        async for frame in ws:
            message = json.loads(frame)
            if message.get("method") == "subscription":
                out.append(int(message["params"]["data"]["timestamp"]))


def accounts_file(directory: Path, users: int) -> Path:
    path = directory / "accounts.json"
    accounts = [
        {
            "client_id": f"soak-{i}",
            "client_secret": f"soak-{i}-secret",
            "id": 5000 + i,
            "username": f"soak{i}",
            "email": f"soak{i}@example.com",
            "type": "main",
        }
        for i in range(users)
    ]
    path.write_text(json.dumps(accounts))
    return path


def delivery(clients: list[Client], reference: list[int]) -> tuple[int, int]:
    """(received, expected) over every connection, between its first and last price."""
    received = expected = 0
    for client in clients:
        for life in client.lives:
            if len(life.stamps) < 2:
                continue
            first, last = life.stamps[0], life.stamps[-1]
            made = bisect.bisect_right(reference, last) - bisect.bisect_left(reference, first)
            expected += made
            received += len(set(life.stamps))
    return received, expected


def flatness(values: list[float]) -> float:
    """(max - min) / min over the samples after warm-up, as a percentage."""
    low = min(values)
    return 100.0 * (max(values) - low) / low if low else math.inf


def chart(path: Path, samples: list[Sample]) -> None:
    """Latency p50/p99 and the server's RSS over the run."""
    charts.over_time(
        path,
        [s.at for s in samples],
        {"p50": [s.p50_ms for s in samples], "p99": [s.p99_ms for s in samples]},
        {"server RSS": [s.rss_mb for s in samples]},
        "soak: tick-to-client latency and server memory",
    )


# -- the run ------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:  # noqa: PLR0912, PLR0915
    executable = (
        shutil.which("cryptomarket", path=str(Path(sys.executable).parent)) or "cryptomarket"
    )
    users = max(1, math.ceil(args.streams / PER_USER))
    sim_port, port = free_port(), free_port()
    children: list[Child] = []
    try:
        children.append(
            spawn(
                "simulate",
                [
                    executable,
                    "simulate",
                    "--port",
                    str(sim_port),
                    "--tick-interval",
                    str(args.tick_interval),
                    "--instrument-interval",
                    str(args.instrument_interval),
                    "--min-heartbeat",
                    "1",
                    "--accounts",
                    str(accounts_file(tmp, users)),
                ],
                cwd=tmp,
                log_path=tmp / "simulate.log",
            )
        )
        wait_port(HOST, sim_port, 30, children[0])
        sim_url = f"ws://{HOST}:{sim_port}/ws/api/v2"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin"),
            "DATABASE_URL": f"sqlite:///{tmp / 'soak.sqlite3'}",
            "DERIBIT_WS_URL": sim_url,
            "PROJECT_MODE": "testing",
            "DERIBIT_HEARTBEAT_INTERVAL": "10",
            "TRACKED_TICKERS": TRACKED,
            "SSE_MAX_STREAMS_PER_USER": str(PER_USER),
            "SSE_OPEN_BURST": str(PER_USER),  # every stream opens at once
            "SSE_OPENS_PER_MINUTE": str(PER_USER),  # and the churn reopens them, 10 % a minute
            "SSE_MAX_STREAMS_PER_ACCOUNT": str(PER_USER),  # each user signs in with its own key
            "LOG_LEVEL": "WARNING",
        }
        argv = [executable, "serve", "--host", HOST, "--port", str(port)]
        if args.tracemalloc is not None:  # snapshots of the server's heap, once a minute
            argv = [
                sys.executable,
                "-m",
                "bench.tracemalloc_run",
                str(args.tracemalloc),
                "60",
                *argv,
            ]
            env["PYTHONPATH"] = str(ROOT)
        elif args.stall_probe:  # what the loop ran in each round over that many ms
            argv = [sys.executable, "-m", "bench.stall_probe", str(args.stall_probe), *argv]
            env["PYTHONPATH"] = str(ROOT)
        server = spawn(
            "serve",
            argv,
            env=env,
            cwd=tmp,
            log_path=tmp / "serve.log",
        )
        children.append(server)
        wait_port(HOST, port, 60, server)
        process = psutil.Process(server.pid)

        reference: list[int] = []
        ref_ready = asyncio.Event()
        ref_task = asyncio.create_task(reference_ticks(sim_url, args.ticker, reference, ref_ready))
        await ref_ready.wait()

        tokens = []
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}", timeout=30) as http:
            for i in range(users):
                signed = await http.post(
                    "/api/v1/sessions",
                    json={
                        "user_id": f"soak{i}",
                        "client_id": f"soak-{i}",
                        "client_secret": f"soak-{i}-secret",
                    },
                )
                signed.raise_for_status()
                token = signed.json()["token"]
                tokens.append(token)
                subscribed = await http.get(
                    f"/api/v1/market/soak{i}/create_order/{args.ticker}?timer=0",
                    headers={"Authorization": f"Bearer {token}"},
                )
                subscribed.raise_for_status()

        latencies = array("d")  # since the last sample; an array for the reason Connection says
        clients = [
            Client(port, tokens[i % users], args.ticker, latencies) for i in range(args.streams)
        ]
        for i, client in enumerate(clients):
            client.start()
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # pace the opening a little; not a synchronisation

        loop = asyncio.get_running_loop()
        started = loop.time()
        end = started + args.minutes * 60
        churn_every = 60.0 / max(1.0, args.streams * args.churn)
        next_churn = started + churn_every
        next_sample = started + args.sample
        churned = storms = 0
        storm_every = args.storm_every * 60 if args.storm_every > 0 else math.inf
        next_storm = started + storm_every
        samples: list[Sample] = []
        while (now := loop.time()) < end:
            if now >= next_churn:
                await clients[churned % len(clients)].churn()
                churned += 1
                next_churn += churn_every
            if now >= next_storm:  # every stream cut at once, every client back at once
                await asyncio.gather(*(client.churn() for client in clients))
                storms += 1
                next_storm += storm_every
                print(f"[{now - started:5.0f}s] storm {storms}: every stream reopened", flush=True)
            if now >= next_sample:
                window = latencies.tolist()
                del latencies[:]
                samples.append(
                    Sample(
                        at=now - started,
                        rss_mb=process.memory_info().rss / 2**20,
                        fds=process.num_fds(),
                        streams=len(clients),
                        p50_ms=percentile(window, 50) if window else 0.0,
                        p99_ms=percentile(window, 99) if window else 0.0,
                    )
                )
                last = samples[-1]
                print(
                    f"[{last.at:5.0f}s] rss {last.rss_mb:6.1f} MB  fds {last.fds}  "
                    f"p50 {last.p50_ms:6.1f} ms  p99 {last.p99_ms:6.1f} ms  churned {churned}",
                    flush=True,
                )
                next_sample += args.sample
            await asyncio.sleep(min(next_churn, next_sample, next_storm, end) - loop.time())
        for client in clients:
            if client.task is not None:
                client.task.cancel()
        await asyncio.gather(*(c.task for c in clients if c.task), return_exceptions=True)
        ref_task.cancel()
        await asyncio.gather(ref_task, return_exceptions=True)
        received, expected = delivery(clients, sorted(set(reference)))
        log_text = (tmp / "serve.log").read_text(errors="replace")
        if args.stall_probe:
            kept = Path(tempfile.gettempdir()) / "soak-serve.log"
            shutil.copy(tmp / "serve.log", kept)
            print(f"the server's log, with the stall probe's rounds: {kept}", flush=True)
        found = re.findall(
            r"event loop stalled for (\d+) ms(?: \(garbage collection (\d+) ms of it\))?",
            log_text,
        )
        stalls = [int(total) for total, _ in found]
        collecting = [int(gc_ms or 0) for _, gc_ms in found]
        return {
            "samples": samples,
            "received": received,
            "expected": expected,
            "churned": churned,
            "storms": storms,
            "stalls": stalls,
            "stalls_collecting": collecting,
            "failures": sum(c.failures for c in clients),
            "refused": sum(c.refused for c in clients),
        }
    finally:
        for child in reversed(children):
            child.stop()


def report(args: argparse.Namespace, result: dict[str, Any]) -> str:
    samples: list[Sample] = result["samples"]
    warm = [s for s in samples if s.at >= args.warmup] or samples
    rss_flat = flatness([s.rss_mb for s in warm])
    fds_flat = flatness([float(s.fds) for s in warm])
    delivered = 100.0 * result["received"] / max(1, result["expected"])
    stalls = result["stalls"]
    machine_rows = machine()
    verdict = [
        ("RSS after warm-up, max-min spread", f"{rss_flat:.1f} %", "≤ 10 %", rss_flat <= 10),
        ("open fds after warm-up, max-min spread", f"{fds_flat:.1f} %", "≤ 10 %", fds_flat <= 10),
        ("event-loop stalls > 100 ms (in the server)", str(len(stalls)), "0", not stalls),
        ("delivery", f"{delivered:.2f} %", "≥ 99 %", delivered >= 99),
    ]
    lines = [
        "# Soak",
        "",
        f"Command: `{command_line()}`",
        "",
        f"{args.streams} streams of {args.ticker} at timer=0, {args.churn:.0%} reconnecting per "
        f"minute ({result['churned']} reconnects), and every {args.storm_every:g} min a storm: "
        f"every stream closed and reopened at once ({result['storms']} storms); every reopen "
        f"resumes with Last-Event-ID, as a browser's EventSource does; simulator "
        f"{rate(args)}, "
        f"{args.minutes} min, warm-up {args.warmup} s excluded from the spreads. Stalls are "
        "measured inside the server by cryptomarket/core/loop_monitor.py.",
        "",
        "## Machine",
        "",
        markdown_table(["", ""], machine_rows),
        "",
        "## Verdict",
        "",
        markdown_table(
            ["figure", "value", "target", "met"],
            [(name, value, target, "yes" if ok else "NO") for name, value, target, ok in verdict],
        ),
        "",
        f"Delivered {result['received']} of {result['expected']} expected prices; "
        f"streams ended by the server: {result['failures']}; opens refused over the opens "
        f"limit (429, tried again after Retry-After): {result['refused']}; worst stall: "
        f"{max(stalls, default=0)} ms; of all stalled time, garbage collection: "
        f"{sum(result['stalls_collecting'])} of {sum(stalls)} ms.",
        "",
        "## Over time",
        "",
        f"![latency p50 and p99, and the server's RSS, over the run]({stem(args)}.png)",
        "",
        "Chart: top, tick-to-client latency p50 and p99; bottom, the server's RSS; x: seconds "
        "since the start, one sample per row of the table below.",
        "",
        markdown_table(
            ["t (s)", "RSS (MB)", "open fds", "latency p50 (ms)", "latency p99 (ms)"],
            [
                (f"{s.at:.0f}", f"{s.rss_mb:.1f}", s.fds, f"{s.p50_ms:.1f}", f"{s.p99_ms:.1f}")
                for s in samples
            ],
        ),
        "",
    ]
    return "\n".join(lines)


def stem(args: argparse.Namespace) -> str:
    return "soak-instrument" if is_instrument(args.ticker) else "soak"


def rate(args: argparse.Namespace) -> str:
    if is_instrument(args.ticker):
        return f"updating the instrument every {args.instrument_interval} s on average"
    return f"ticking every {args.tick_interval} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--churn", type=float, default=0.10, help="share reconnecting per minute")
    parser.add_argument("--storm-every", type=float, default=3.0, help="minutes (0: none)")
    parser.add_argument("--tick-interval", type=float, default=0.1)
    parser.add_argument("--ticker", default=TRACKED, help="an index name or an instrument")
    parser.add_argument("--instrument-interval", type=float, default=0.1)
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds left out of spreads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tracemalloc", type=Path, help="write the server's heap snapshots here")
    parser.add_argument(
        "--stall-probe", type=float, default=0, help="ms: log rounds of the server's loop over it"
    )
    args = parser.parse_args()
    raise_nofile()
    with tempfile.TemporaryDirectory(prefix="cm-soak-") as tmp:
        result = asyncio.run(soak(args, Path(tmp)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem(args)}.md").write_text(report(args, result))
    chart(args.out / f"{stem(args)}.png", result["samples"])
    print((args.out / f"{stem(args)}.md").read_text())


if __name__ == "__main__":
    main()
