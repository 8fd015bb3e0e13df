"""Reconnect storm: every stream cut at once (the server killed and restarted), all back with
Last-Event-ID, nothing lost or doubled.

    .venv/bin/python -m bench.bench_storm [--streams 4000] [--storms 2]

One simulator (an index tick every `--tick-interval` s), `cryptomarket serve` on SQLite, and
`--streams` EventSource-like clients (bench/storm_clients.py, two processes) of signed-in users
subscribed at timer=0. After `--before` seconds the server is killed (SIGKILL: nothing of it
ends cleanly) and started again on the same port and database; each client waits the server's
`retry:` and reconnects with the id of the last event it got, again while refused. Measured:

- time until every client is back (its `connected` event), from the kill, and per client;
- the ledger (bench/chaos/ledger.py `streams`, against the simulator's record of every tick):
  every tick of the run reached every client once, in order, or lies in a `gap` event it got.

The raw floor (bench/sse_raw.py) goes through the same storm: its clients are back as soon as it
accepts them (it has no sign-in, store or replay), the least a server can take. Its ledger is
not checked (it sends nothing of what its clients missed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

from bench.chaos.clients import Connection
from bench.chaos.ledger import streams as stream_ledger
from bench.chaos.simctl import SimControl
from bench.clients import ClientProcesses
from bench.common import RESULTS_DIR
from bench.sse_common import (
    HOST,
    PYTHON,
    ROOT,
    Child,
    clean_env,
    cryptomarket_command,
    free_port,
    machine_description,
    raise_nofile,
    scratch,
    start,
    start_profiler,
    start_simulator,
    streams_env,
    wait_port,
)
from bench.sse_servers import RAW, TICKER, signed_in, sse_requests

PRODUCT = "cryptomarket"
STREAMS_PER_USER = 20  # within SSE_MAX_STREAMS_PER_USER's default
GOAL_S = 10.0  # issue 14: all back within 10 s of the kill, 0 ticks lost or doubled
BEFORE_ISSUE_14 = "28 s for 4,000 streams (issue 14, before its work)"


@dataclass
class Storm:
    server: str
    back_s: list[float] = field(default_factory=list)  # per client, kill -> `connected`
    all_back_s: float = math.inf
    restart_s: float = 0.0  # kill -> the new server accepting connections


@dataclass
class Run:
    server: str
    opened_s: float = 0.0
    storms: list[Storm] = field(default_factory=list)
    ledger: dict[str, int] = field(default_factory=dict)
    ledger_details: list[str] = field(default_factory=list)


class Clients(ClientProcesses):
    """The client processes (bench/storm_clients.py)."""

    def __init__(self, processes: int, logs: Path, tag: str) -> None:
        argv = [PYTHON, "-m", "bench.storm_clients"]
        super().__init__(processes, logs, tag, argv, "storm_clients")

    def open(self, n: int, port: int, requests: list[str]) -> float:
        commands = [
            {
                "cmd": "open",
                "host": HOST,
                "port": port,
                "requests": requests,
                "count": count,
                "prefix": f"p{k}-",
                "concurrency": 200,
            }
            for k, count in enumerate(self.shares(n))
        ]
        return max(float(answer["seconds"]) for answer in self.ask(commands, 300))

    def connected_ms(self) -> list[int]:
        answers = self.ask_each({"cmd": "status"}, 30)
        return [ms for answer in answers for ms in answer["connected_ms"]]

    def stop(self) -> list[dict[str, Any]]:
        answers = self.ask_each({"cmd": "stop"}, 120)
        return [record for answer in answers for record in answer]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Server:
    """The server under the storm, started again on the same port after each kill."""

    def __init__(self, kind: str, sim_url: str, tmp: Path, logs: Path) -> None:
        self.kind = kind
        self.port = free_port()
        self.tmp, self.logs = tmp, logs
        self.starts = 0
        self.env = clean_env(
            DATABASE_URL=f"sqlite:///{tmp}/storm.sqlite3",
            DERIBIT_WS_URL=sim_url,
            TRACKED_TICKERS=TICKER,
            # Every client comes back at once, several per user.
            **streams_env(STREAMS_PER_USER, heartbeat=10),
            # The run's users sign in from one address, one after the other.
            SIGN_IN_BURST="10000",
            SIGN_INS_PER_MINUTE="100000",
        )
        if kind == RAW:
            self.env = clean_env(PYTHONPATH=str(ROOT))
        self.sim_url = sim_url
        self.child: Child | None = None

    def argv(self) -> list[str]:
        if self.kind == RAW:
            return [
                PYTHON,
                "-m",
                "bench.sse_raw",
                "--host",
                HOST,
                "--port",
                str(self.port),
                "--deribit-url",
                self.sim_url,
                "--ticker",
                TICKER,
            ]
        return [cryptomarket_command(), "serve", "--host", HOST, "--port", str(self.port)]

    def start(self) -> None:
        self.starts += 1
        name = f"{self.kind}-{self.starts}"
        self.child = start(name, self.argv(), env=self.env, cwd=self.tmp, logs=self.logs)
        wait_port(HOST, self.port, 60, self.child)

    def kill(self) -> None:
        assert self.child is not None  # noqa: S101
        os.killpg(self.child.popen.pid, signal.SIGKILL)
        self.child.popen.wait(10)


def requests_for(server: Server, streams: int) -> list[str]:
    """Signed-in users subscribed at timer=0, STREAMS_PER_USER streams each (the product)."""
    if server.kind == RAW:
        return sse_requests(server.port, "/events", None)
    signing = SimpleNamespace(tokens={}, args=SimpleNamespace(ticker=TICKER))
    with httpx.Client(base_url=f"http://{HOST}:{server.port}", timeout=30) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").json().get("upstream") != "connected":
            if time.monotonic() > deadline:
                raise RuntimeError("the server never connected upstream")
            time.sleep(0.2)
        users = range(math.ceil(streams / STREAMS_PER_USER))
        tokens = [signed_in(signing, client, f"storm-{k}") for k in users]  # type: ignore[arg-type]
    return sse_requests(server.port, "/api/v2/sse/connection?timer=0", tokens)


def run_one(args: argparse.Namespace, kind: str, sim_url: str, tmp: Path, logs: Path) -> Run:
    run = Run(kind)
    server = Server(kind, sim_url, tmp, logs)
    server.start()
    requests = requests_for(server, args.streams)
    clients = Clients(2, logs, kind)
    print(f"[{clock()}] {kind}: opening {args.streams:,} streams", flush=True)
    run.opened_s = clients.open(args.streams, server.port, requests)
    time.sleep(args.before)
    w0 = now_ms()
    for k in range(args.storms):
        storm = Storm(kind)
        killed = now_ms()
        server.kill()
        server.start()
        storm.restart_s = (now_ms() - killed) / 1000
        profiler = profile(args, server, logs, f"{kind}-storm-{k + 1}")
        deadline = time.monotonic() + args.give_up
        while True:
            back = [ms for ms in clients.connected_ms() if ms > killed]
            if len(back) == args.streams or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        storm.back_s = sorted((ms - killed) / 1000 for ms in back)
        if profiler is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(profiler.popen.pid, signal.SIGINT)  # py-spy writes what it has
            profiler.popen.wait(30)
            print(f"py-spy profile of the storm: {logs}/py-spy-{kind}-storm-{k + 1}.txt")
        if len(back) == args.streams:
            storm.all_back_s = storm.back_s[-1]
        run.storms.append(storm)
        print(
            f"[{clock()}] {kind}: storm {k + 1}: {len(back):,} of {args.streams:,} back in "
            f"{storm.back_s[-1] if back else math.inf:.1f} s (server listening again after "
            f"{storm.restart_s:.1f} s)",
            flush=True,
        )
        time.sleep(args.after)
    w1 = now_ms() - 2_000  # the newest ticks may still be on their way
    records = clients.stop()
    stop_everything_of(clients, server)
    if kind == PRODUCT:
        check_ledger(run, records, sim_url, w0, w1)
    return run


def profile(args: argparse.Namespace, server: Server, logs: Path, tag: str) -> Child | None:
    """py-spy on the restarted server while its clients come back (`--py-spy`)."""
    if not args.py_spy or server.child is None:
        return None
    return start_profiler(args.py_spy, server.child.pid, 120, logs / f"py-spy-{tag}.txt")


def stop_everything_of(clients: Clients, server: Server) -> None:
    for child in [*clients.children, server.child]:
        if child is not None:
            child.stop()


def check_ledger(run: Run, records: list[dict[str, Any]], sim_url: str, w0: int, w1: int) -> None:
    async def produced() -> list[tuple[int, float]]:
        control = SimControl(sim_url)
        try:
            return await control.produced(TICKER, w0, w1)
        finally:
            await control.close()

    connections = [
        Connection(
            client=record["chain"],
            replica=PRODUCT,
            chain=record["chain"],
            last_event_id=None,
            opened_ms=record["opened_ms"],
            closed_ms=record["closed_ms"] or w1,
            tickers=set(record["tickers"]),
            prices={t: [(ts, 0.0) for ts in stamps] for t, stamps in record["prices"].items()},
            gaps={t: [(low, high) for low, high in spans] for t, spans in record["gaps"].items()},
        )
        for record in records
    ]
    check = stream_ledger(connections, {TICKER: asyncio.run(produced())}, (w0, w1), 0, _blame)
    run.ledger = check.counts
    run.ledger_details = check.details[:5]


def _blame(_ts: int) -> str:
    return "a storm"


def clock() -> str:
    return time.strftime("%H:%M:%S")


def quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else math.inf


def render(args: argparse.Namespace, runs: list[Run], machine: str, wall: float) -> str:
    lines = [
        "# Reconnect storm: every stream cut at once, all back with Last-Event-ID",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} by `python -m bench.bench_storm` on {machine}: "
        f"{args.streams:,} streams, an index tick every {args.tick_interval:g} s, "
        f"{args.storms} storm(s), each a SIGKILL of the server and a start of a new one on the "
        f"same port and database; clients wait the server's `retry:` and resume with their "
        f"last event id. Real time {wall:.0f} s.",
        "",
        "| metric | " + " | ".join(run.server for run in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]

    def row(name: str, cells: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("first open of every stream (s)", [f"{run.opened_s:.1f}" for run in runs])
    for k in range(args.storms):
        storms = [run.storms[k] if k < len(run.storms) else Storm(run.server) for run in runs]
        row(
            f"storm {k + 1}: server listening again after the kill (s)",
            [f"{s.restart_s:.1f}" for s in storms],
        )
        row(
            f"storm {k + 1}: streams back, p50 / p99 (s from the kill)",
            [f"{quantile(s.back_s, 0.5):.1f} / {quantile(s.back_s, 0.99):.1f}" for s in storms],
        )
        row(
            f"storm {k + 1}: **every stream back (s from the kill)**",
            [f"**{s.all_back_s:.1f}**" if s.back_s else "-" for s in storms],
        )
    for name in ("streams", "received", "gap_events", "lost", "duplicates", "out_of_order"):
        row(
            f"ledger: {name.replace('_', ' ')}",
            [f"{run.ledger[name]:,}" if run.ledger else "not checked" for run in runs],
        )
    product = next((run for run in runs if run.server == PRODUCT), None)
    if product is not None:
        worst = max((s.all_back_s for s in product.storms), default=math.inf)
        whole = bool(product.ledger) and not (
            product.ledger["lost"] or product.ledger["duplicates"] or product.ledger["out_of_order"]
        )
        met = worst <= GOAL_S and whole
        lines += [
            "",
            "| target | measured | met? |",
            "|---|---|---|",
            f"| every stream back within {GOAL_S:g} s of the kill, 0 ticks lost or doubled "
            f"(issue 14; before: {BEFORE_ISSUE_14}) | {worst:.1f} s, "
            f"{product.ledger.get('lost', '?')} lost, {product.ledger.get('duplicates', '?')} "
            f"doubled | {'yes' if met else '**no**'} |",
        ]
        lines += [f"- {detail}" for detail in product.ledger_details]
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--streams", type=int, default=4000)
    add("--storms", type=int, default=2, help="kills and restarts, one after the other")
    add("--tick-interval", type=float, default=0.2, help="simulator: s between index ticks")
    add("--before", type=float, default=5.0, help="s of steady streams before the first storm")
    add("--after", type=float, default=8.0, help="s of steady streams after each storm")
    add("--give-up", type=float, default=90.0, help="s to wait for every stream back")
    add("--servers", default=f"{PRODUCT},{RAW}")
    add("--py-spy", default="", help="path of py-spy: profile each restarted server's storm")
    add("--output", default=str(RESULTS_DIR / "storm.md"), help="markdown file ('' for none)")
    return parser.parse_args()


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    args = parse_args()
    raise_nofile()
    machine = machine_description()
    began = time.monotonic()
    with scratch("storm-bench-", lambda: bool(args.py_spy)) as (tmp, logs):
        sim_url = start_simulator(tmp, logs, tick_interval=args.tick_interval)
        kinds = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
        runs = [run_one(args, kind, sim_url, tmp, logs) for kind in kinds]
        text = render(args, runs, machine, time.monotonic() - began)
        print("\n" + text, flush=True)
        if args.output:
            Path(args.output).write_text(text)
            print(f"written to {args.output}")


if __name__ == "__main__":
    main()
