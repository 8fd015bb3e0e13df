"""SSE fan-out benchmark: `cryptomarket serve` against a minimal sse-starlette broadcaster.

    .venv/bin/python -m bench.bench_sse [--sizes 1000,4000,10000] [--seconds 20]
    .venv/bin/python -m bench.bench_sse --ticker BTC-PERPETUAL   # an instrument, 10 updates/s

One Deribit simulator (`cryptomarket simulate`, one index tick per second, an instrument's
`100ms` channel about ten updates a second) feeds both servers. For every
size N and each server, in a fresh process so that memory figures start clean:

1. start the server (`.venv/bin/cryptomarket serve`, `bench/sse_baseline.py` under uvicorn, or
   the floor: `bench/sse_raw.py`, a bare asyncio protocol on uvloop writing each frame to every
   socket);
   for the product, sign in `bench-<k>` users with the simulator's `sim-alice` key and subscribe
   each to the ticker (`--ticker`, btc_usd by default) with timer=0;
2. read its RSS, open N SSE streams from load-generator processes (bench/clients.py: by default
   `bench/sse_cclient.c`, one epoll loop in C; `--clients python`: `bench/sse_loadgen.py`, raw
   asyncio sockets), wait a warm-up, read its RSS again: memory per stream = the growth / N;
3. over `--seconds`, count the price events each stream receives whose tick timestamp lies in the
   window, with latency = receipt wall clock − the tick's timestamp (the simulator stamps ticks
   with this machine's wall clock), and read the server's CPU time;
4. delivery = events received / (N × ticks the simulator produced in the window); the simulator's
   record of what it sent (`sim/produced`, for an index or an instrument) says which.

Both servers keep a Deribit heartbeat of `--heartbeat` seconds, 10 by default: Deribit's minimum,
the product's default, and the least it accepts outside PROJECT_MODE=testing (which the benchmark
sets for shorter ones). With 1 s the simulator drops any socket whose event loop stalls for about a
second, which at 10,000 streams a full garbage collection does, and ticks are then lost upstream.

The tables go to stdout and to `bench/results/sse.md` (`sse-instrument.md` for an instrument).
`--gc-log` runs each server under `bench/sse_gclog.py` and adds its full-GC pauses;
`--py-spy PATH` records a profile of the window; `--nginx` puts the project's nginx in front of the
product (bench/nginx_front.py). Latency is also given after the simulator's send: each event's less
its tick's at a direct subscriber of the simulator, which sends a tick up to 50 ms after its
timestamp (a delay drawn anew each run, the same for every server).
"""
# ruff: noqa: RUF001, RUF002, RUF003  # the tables use ×, − and – on purpose

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import charts
from bench.clients import CLIENT_KINDS, LoadGens, client_processes
from bench.nginx_front import Front, start_front
from bench.sse_common import (
    HOST,
    PYTHON,
    ROOT,
    Child,
    clean_env,
    cpu_seconds,
    cryptomarket_command,
    free_port,
    machine_description,
    raise_nofile,
    rss_bytes,
    running,
    scratch,
    start,
    start_simulator,
    stop,
    streams_env,
    wait_port,
)
from bench.sse_common import start_profiler as start_profiler_of
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.kinds import channel_of

TICKER = "btc_usd"
SIM_CLIENT_ID, SIM_CLIENT_SECRET = "sim-alice", "sim-alice-secret"
RESULTS = ROOT / "bench" / "results"
INSTRUMENT_SIZES = "500,1000,2000"  # ten updates a second: 2,000 streams are 20,000 events/s
PRODUCT, BASELINE, RAW = "cryptomarket", "sse-starlette", "raw-asyncio"
SERVERS = (PRODUCT, BASELINE, RAW)  # RAW: the floor, bench/sse_raw.py
WANTED_STREAMS_PER_USER = 20_000

# The targets.
TARGET_SIZE = 10_000
TARGET_DELIVERY = 99.0  # % at TARGET_SIZE clients
TARGET_KB_PER_CONN = 20.0
TARGET_P99_MS_AT_1000 = 50.0
FLOOR_FACTOR = 1.5  # issue 14: CPU per event and p99 within this of the raw floor
TARGET_KIB_PER_STREAM = 10.0  # issue 14
TARGET_OPENS_PER_S = 2_000  # issue 14: 4,000 streams in 2 s


def sse_requests(port: int, path: str, tokens: list[str] | None) -> list[str]:
    """The raw GET of a stream, one per token (connections take them round-robin)."""
    base = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
    )
    if not tokens:
        return [base + "\r\n"]
    return [base + f"Authorization: Bearer {token}\r\n\r\n" for token in tokens]


# -- the servers -------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every run shares."""

    args: argparse.Namespace
    sim_url: str
    tmp: Path
    logs: Path
    per_user: int
    probe: UpstreamProbe
    tokens: dict[str, str] = field(default_factory=dict)  # user -> session token


@dataclass
class Server:
    kind: str
    child: Child
    port: int
    requests: list[str]
    process: psutil.Process = field(init=False)
    front: Front | None = None  # nginx in front of it (--nginx): the clients connect there

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.child.pid)

    @property
    def client_port(self) -> int:
        return self.front.port if self.front is not None else self.port


def product_streams_per_user(wanted: int) -> int:
    """SSE_MAX_STREAMS_PER_USER as high as the product's settings allow, at most `wanted`."""
    from cryptomarket.core.config import Settings  # noqa: PLC0415

    with contextlib.suppress(Exception):  # the setting or its bound may change: ask for `wanted`
        for rule in Settings.model_fields["SSE_MAX_STREAMS_PER_USER"].metadata:
            if getattr(rule, "le", None) is not None:
                return min(wanted, int(rule.le))
    return wanted


def gc_wrapped(argv: list[str], gc_log: Path | None, heap: str = "") -> list[str]:
    """`argv`, run under bench/sse_gclog.py when GC pauses are to be logged, or under
    bench/tracemalloc_run.py when heap snapshots are to be written to `heap`."""
    if heap:
        return [PYTHON, "-m", "bench.tracemalloc_run", heap, "3", *argv]
    if gc_log is None:
        return argv
    program = argv[1:] if argv[0] == PYTHON else argv  # `python -m x ...` -> `-m x ...`
    return [PYTHON, "-m", "bench.sse_gclog", str(gc_log), *program]


def start_product(bench: Bench, n: int, tag: str, gc_log: Path | None) -> Server:
    port = free_port()
    env = clean_env(
        DATABASE_URL=f"sqlite:///{bench.tmp}/bench.sqlite3",
        DERIBIT_WS_URL=bench.sim_url,
        TRACKED_TICKERS=TICKER,  # an instrument is subscribed by its users alone
        **streams_env(bench.per_user, bench.args.heartbeat),
    )
    if gc_log is not None or bench.args.tracemalloc:
        env["PYTHONPATH"] = str(ROOT)
    argv = [cryptomarket_command(), "serve", "--host", HOST, "--port", str(port)]
    heap = bench.args.tracemalloc and f"{bench.args.tracemalloc}/{tag}"
    wrapped = gc_wrapped(argv, gc_log, heap)
    child = start(f"serve-{tag}", wrapped, env=env, cwd=bench.tmp, logs=bench.logs)
    wait_port(HOST, port, 60, child)
    tokens = []
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health").json()).get("upstream") != "connected":
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve never connected upstream: {health}")
            time.sleep(0.2)
        for k in range(math.ceil(n / bench.per_user)):
            tokens.append(signed_in(bench, client, f"bench-{k}"))
    requests = sse_requests(port, "/api/v2/sse/connection?timer=0", tokens)
    return Server(PRODUCT, child, port, requests)


def signed_in(bench: Bench, client: httpx.Client, user: str) -> str:
    """A session token of `user`, subscribed to the ticker at timer=0.

    Sessions and subscriptions live in the database, which every run shares, so a user signs in
    once per benchmark. The product limits sign-in attempts per client address and per key (a
    429 says when to retry): wait and retry then.
    """
    if (token := bench.tokens.get(user)) is None:
        body = {"user_id": user, "client_id": SIM_CLIENT_ID, "client_secret": SIM_CLIENT_SECRET}
        for _attempt in range(30):
            answer = client.post("/api/v1/sessions", json=body)
            if answer.status_code != 429:
                break
            wait = re.search(r"in (\d+) s", answer.text)
            time.sleep(float(wait.group(1)) if wait else 6.0)
        answer.raise_for_status()
        token = bench.tokens[user] = answer.json()["token"]
    client.get(
        f"/api/v1/market/{user}/create_order/{bench.args.ticker}",
        params={"timer": 0},
        headers={"Authorization": f"Bearer {token}"},
    ).raise_for_status()
    return token


def start_baseline(bench: Bench, tag: str, gc_log: Path | None, kind: str = BASELINE) -> Server:
    """sse-starlette (bench/sse_baseline.py), or the raw floor (bench/sse_raw.py)."""
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "bench.sse_baseline" if kind == BASELINE else "bench.sse_raw",
        "--host",
        HOST,
        "--port",
        str(port),
        "--deribit-url",
        bench.sim_url,
        "--ticker",
        bench.args.ticker,
        "--heartbeat",
        str(bench.args.heartbeat),
    ]
    child = start(
        f"baseline-{tag}",
        gc_wrapped(argv, gc_log),
        env=clean_env(PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        logs=bench.logs,
    )
    wait_port(HOST, port, 60, child)
    if kind == BASELINE:
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
            client.get("/clients").raise_for_status()
    return Server(kind, child, port, sse_requests(port, "/sse", None))


# -- the simulator -----------------------------------------------------------------------------


def simulator_ticks(sim_url: str, ticker: str, since: int, until: int) -> list[int]:
    """Timestamps of the ticks (an instrument's `100ms` frames) the simulator sent with
    since <= ts < until: its own record, `sim/produced`."""
    from websockets.sync.client import connect  # noqa: PLC0415

    name = "instrument_name" if is_instrument(ticker) else "index_name"
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "sim/produced",
        "params": {name: ticker, "since": since - 1, "until": until - 1},
    }
    with connect(sim_url, open_timeout=10, max_size=None) as ws:
        ws.send(json.dumps(request))
        while (message := json.loads(ws.recv(timeout=10))).get("id") != 1:
            pass
    result = message["result"]
    if not result["complete"]:
        raise RuntimeError(f"the simulator forgot part of the window of {ticker}")
    return sorted({int(ts) for ts, *_ in result["ticks"]})


class UpstreamProbe:
    """A direct subscriber of the simulator: the latency floor before any server is involved."""

    def __init__(self, sim_url: str, ticker: str) -> None:
        self.sim_url = sim_url
        self.channel = channel_of(ticker)
        self.samples: list[tuple[int, float]] = []  # (timestamp, receipt − timestamp in ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from websockets.sync.client import connect  # noqa: PLC0415

        subscribe = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "public/subscribe",
            "params": {"channels": [self.channel]},
        }
        with contextlib.suppress(Exception), connect(self.sim_url, open_timeout=10) as ws:
            ws.send(json.dumps(subscribe))
            while not self._stop.is_set():
                try:
                    raw = ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                received = time.time() * 1000
                message = json.loads(raw)
                data = message.get("params", {}).get("data")
                if message.get("method") == "subscription" and isinstance(data, dict):
                    timestamp = int(data["timestamp"])
                    self.samples.append((timestamp, received - timestamp))

    def offsets(self, since: int, until: int) -> dict[int, float]:
        """Tick timestamp -> its latency here (ms), for the ticks in [since, until)."""
        return {ts: lat for ts, lat in self.samples if since <= ts < until}

    def latency(self, since: int, until: int) -> dict[str, float]:
        values = sorted(self.offsets(since, until).values())
        if not values:
            return {}
        return {"p50": values[len(values) // 2], "max": values[-1]}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- other people's load on a shared machine ---------------------------------------------------


def wait_for_quiet(max_wait: float, threshold: float) -> float:
    """Wait (at most `max_wait` s) until processes outside this benchmark use < `threshold` % of
    one core; return what they used last. Other jobs on a shared machine skew every figure here,
    so the report shows this too."""
    ours = {os.getpid()} | {child.pid for child in running()}
    deadline = time.monotonic() + max_wait
    while True:
        others = others_percent(ours, 2.0)
        if others < threshold:
            return others
        if time.monotonic() >= deadline:
            print(f"[{now()}] other processes still use {others:.0f}% of a core; going on")
            return others
        print(f"[{now()}] waiting for a quieter machine: others use {others:.0f}% of a core")


def busy_seconds(before: Any, after: Any) -> float:
    """CPU seconds (all cores) spent between two psutil.cpu_times() readings."""
    total = float(sum(after) - sum(before))
    return total - float(after.idle - before.idle) - float(after.iowait - before.iowait)


def others_percent(ours: set[int], seconds: float) -> float:
    def own() -> float:
        total = 0.0
        for pid in ours:
            with contextlib.suppress(psutil.Error):
                total += cpu_seconds(psutil.Process(pid))
        return total

    before, own0, t0 = psutil.cpu_times(), own(), time.monotonic()
    time.sleep(seconds)
    after, own1, t1 = psutil.cpu_times(), own(), time.monotonic()
    return max(0.0, 100 * (busy_seconds(before, after) - (own1 - own0)) / (t1 - t0))


def own_cpu(server: Server, loadgens: LoadGens) -> float:
    """CPU seconds of every process of this benchmark (server, clients, simulator, ourselves)."""
    total = cpu_seconds(server.process) + loadgens.cpu() + cpu_seconds(psutil.Process())
    for child in running():
        if child.name == "simulator":
            with contextlib.suppress(psutil.Error):
                total += cpu_seconds(psutil.Process(child.pid))
    return total


# -- one run -----------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    size: int
    seconds: float
    opened: int = 0
    failed: int = 0
    open_errors: dict[str, int] = field(default_factory=dict)
    open_seconds: float = 0.0
    ticks: int = 0
    delivered: int = 0
    duplicates: int = 0
    closed_in_window: int = 0
    starved: int = 0  # streams that missed at least one tick of the window
    cpu_percent: float = 0.0
    loadgen_cpu_percent: float = 0.0
    rss0: int = 0
    rss_idle: int = 0
    rss_peak: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    upstream_ms: dict[str, float] = field(default_factory=dict)
    first_ms: dict[str, float] = field(default_factory=dict)  # per tick: first receipt − tick
    fanout_ms: dict[str, float] = field(default_factory=dict)  # per tick: last receipt − tick
    # Latency after the simulator's send: each event's less its tick's at the direct subscriber.
    # The simulator sends a tick up to 50 ms after its timestamp; that offset, drawn anew for
    # every run, is the same for every server and moves a run's p99 by as much as 20 ms.
    net_ms: dict[str, float] = field(default_factory=dict)
    gc_pauses: dict[str, float] = field(default_factory=dict)  # full collections in the window
    machine_busy: float = 0.0  # % of all cores busy in the window, every process
    others_percent: float = 0.0  # % of one core used in the window outside this benchmark
    others_before: float = 0.0  # the same, just before the run
    notes: list[str] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return self.size * self.ticks

    @property
    def delivery(self) -> float:
        return 100.0 * self.delivered / self.expected if self.expected else 0.0

    @property
    def events_per_second(self) -> float:
        return self.delivered / self.seconds

    @property
    def target_per_second(self) -> float:
        return self.expected / self.seconds

    @property
    def kb_per_conn(self) -> float:
        return (self.rss_idle - self.rss0) / max(1, self.opened) / 1024

    @property
    def cpu_ms_per_1k_events(self) -> float:
        cpu_ms = self.cpu_percent / 100 * self.seconds * 1000
        return cpu_ms / self.delivered * 1000 if self.delivered else math.nan

    def p(self, key: str) -> float:
        return self.latency_ms.get(key, math.nan)

    def net(self, key: str) -> float:
        return self.net_ms.get(key, math.nan)


def run_one(bench: Bench, kind: str, n: int) -> Result:
    args = bench.args
    tag = f"{ {PRODUCT: 'product', BASELINE: 'baseline', RAW: 'raw'}[kind] }-{n}"
    result = Result(kind, n, float(args.seconds))
    gc_log = bench.logs / f"gc-{tag}.log" if args.gc_log else None
    result.others_before = wait_for_quiet(args.quiet_wait, args.quiet_threshold)
    print(f"[{now()}] {kind} x {n}: starting the server", flush=True)
    if kind == PRODUCT:
        server = start_product(bench, n, tag, gc_log)
    else:
        server = start_baseline(bench, tag, gc_log, kind)
    loadgens: LoadGens | None = None
    try:
        if args.nginx and kind == PRODUCT:  # nginx/ buffers every other path than the stream's
            server.front = start_front(bench.tmp, bench.logs, [server.port])
        time.sleep(args.settle)  # ticks flowing, start-up garbage gone
        warm_up(bench, server, tag)
        result.rss0 = rss_bytes(server.process)
        processes = args.loadgens or client_processes(args.clients, n)
        loadgens = LoadGens(processes, bench.logs, tag, args.clients)
        print(f"[{now()}] {kind} x {n}: opening the streams from {processes} client process(es)")
        profiler = start_profiler(bench, server, f"{tag}-opens", seconds=600)
        opened = loadgens.open(n, server.client_port, server.requests, args.concurrency)
        if profiler is not None:
            stop_profiler(profiler, result, now=True)
        result.opened, result.failed = opened["opened"], opened["failed"]
        result.open_seconds, result.open_errors = opened["seconds"], opened["errors"]
        print(
            f"[{now()}] {kind} x {n}: {result.opened} open, {result.failed} failed in "
            f"{result.open_seconds:.1f} s; warming up {args.warmup:g} s",
            flush=True,
        )
        time.sleep(args.warmup)
        result.rss_idle = rss_bytes(server.process)
        w0, w1 = measure_window(bench, server, loadgens, result, tag)
        time.sleep(args.grace)  # the last ticks of the window may still be on their way
        collect(bench, loadgens.report(), result, w0, w1)
        if gc_log is not None:
            result.gc_pauses = gc_pauses(gc_log, w0, w1)
        print(
            f"[{now()}] {kind} x {n}: {result.delivery:.2f}% delivered, p50 {result.p('p50')} "
            f"ms, p99 {result.p('p99')} ms, CPU {result.cpu_percent:.0f}%",
            flush=True,
        )
    finally:
        if loadgens is not None:
            loadgens.close()
        if server.front is not None:
            server.front.stop()
        stop(server.child)
    return result


def warm_up(bench: Bench, server: Server, tag: str) -> None:
    """Open and close a burst of streams before RSS_0 is read: what the first streams set off
    once (lazy imports and caches, the allocator's high-water mark of a burst of connects) is
    not memory per stream. Both servers get the same."""
    count = bench.args.warm_streams
    if count <= 0:
        return
    loadgens = LoadGens(1, bench.logs, f"{tag}-warm", bench.args.clients)
    try:
        loadgens.open(count, server.client_port, server.requests, bench.args.concurrency)
    finally:
        loadgens.close()
    time.sleep(bench.args.settle)  # the closed streams' state freed


def measure_window(
    bench: Bench, server: Server, loadgens: LoadGens, result: Result, tag: str
) -> tuple[int, int]:
    """Arm the clients for [w0, w1) (ms) and read CPU and RSS over it."""
    w0 = int(time.time() * 1000) + 300
    w1 = w0 + int(bench.args.seconds * 1000)
    loadgens.arm(w0, w1)
    time.sleep(max(0.0, w0 / 1000 - time.time()))
    cpu0, clients0, ours0, t0 = (
        cpu_seconds(server.process),
        loadgens.cpu(),
        own_cpu(server, loadgens),
        time.monotonic(),
    )
    machine0 = psutil.cpu_times()
    peak = rss_bytes(server.process)
    profiler = start_profiler(bench, server, tag)
    while (left := w1 / 1000 - time.time()) > 0:
        time.sleep(min(1.0, left))
        peak = max(peak, rss_bytes(server.process))
    cpu1, clients1, ours1, t1 = (
        cpu_seconds(server.process),
        loadgens.cpu(),
        own_cpu(server, loadgens),
        time.monotonic(),
    )
    machine1 = psutil.cpu_times()
    busy = busy_seconds(machine0, machine1)
    result.machine_busy = 100 * busy / max(1e-9, sum(machine1) - sum(machine0))
    result.others_percent = max(0.0, 100 * (busy - (ours1 - ours0)) / (t1 - t0))
    result.cpu_percent = 100 * (cpu1 - cpu0) / (t1 - t0)
    result.loadgen_cpu_percent = 100 * (clients1 - clients0) / (t1 - t0)
    result.rss_peak = peak
    if profiler is not None:
        stop_profiler(profiler, result)
    return w0, w1


def collect(bench: Bench, reports: list[dict[str, Any]], result: Result, w0: int, w1: int) -> None:
    """Merge the clients' counts with the simulator's ticks of the window."""
    ticks = simulator_ticks(bench.sim_url, bench.args.ticker, w0, w1)
    result.ticks = len(ticks)
    result.upstream_ms = bench.probe.latency(w0, w1)
    per_tick: dict[int, int] = {}
    bins: dict[int, int] = {}
    per_conn: dict[int, int] = {0: result.failed} if result.failed else {}  # never opened: 0
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    sent = bench.probe.offsets(w0, w1)  # tick -> its latency at the direct subscriber (ms)
    net: dict[int, int] = {}  # 0.1 ms bins
    for report in reports:
        for ts, ms_bins in report.get("tick_bins", {}).items():
            if (offset := sent.get(int(ts))) is not None:
                for ms, count in ms_bins.items():
                    at = round((int(ms) + 0.5 - offset) * 10)
                    net[at] = net.get(at, 0) + count
        for ts, count in report["per_tick"].items():
            per_tick[int(ts)] = per_tick.get(int(ts), 0) + count
        for value, count in report["latency_bins"].items():
            bins[int(value)] = bins.get(int(value), 0) + count
        for value, count in report["per_conn_counts"].items():
            per_conn[int(value)] = per_conn.get(int(value), 0) + count
        for ts, value in report["first"].items():
            first[int(ts)] = min(first.get(int(ts), math.inf), value)
        for ts, value in report["last"].items():
            last[int(ts)] = max(last.get(int(ts), 0.0), value)
        result.duplicates += report["duplicates"]
        result.closed_in_window += report["closed_in_window"]
    if unknown := set(per_tick) - set(ticks):
        result.notes.append(
            f"{len(unknown)} tick timestamps received that the simulator never sent"
        )
    if result.duplicates:
        result.notes.append(f"{result.duplicates} duplicate or out-of-order price events")
    result.delivered = sum(per_tick.values())
    result.starved = sum(count for got, count in per_conn.items() if got < result.ticks)
    result.latency_ms = percentiles(bins, (50, 90, 99, 99.9))
    result.net_ms = percentiles(net, (50, 90, 99, 99.9))
    result.first_ms = median_and_worst(list(first.values()))
    result.fanout_ms = median_and_worst(list(last.values()))


def percentiles(bins: dict[int, int], wanted: tuple[float, ...]) -> dict[str, float]:
    """Percentiles of a histogram of 0.1 ms bins."""
    total = sum(bins.values())
    if not total:
        return {}
    ordered = sorted(bins.items())
    out: dict[str, float] = {}
    for w in wanted:
        rank, seen = math.ceil(total * w / 100), 0
        for value, count in ordered:
            seen += count
            if seen >= rank:
                out[f"p{w:g}"] = value / 10
                break
    out["max"] = ordered[-1][0] / 10
    return out


def median_and_worst(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": ordered[len(ordered) // 2], "worst": ordered[-1]}


def gc_pauses(path: Path, since: int, until: int) -> dict[str, float]:
    """Full (generation 2) collections that ended in the window: count, worst and total pause."""
    pauses = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            at, generation, pause, _collected = line.split()
            if generation == "2" and since <= float(at) * 1000 < until:
                pauses.append(float(pause))
    return {"count": len(pauses), "worst": max(pauses, default=0.0), "total": sum(pauses)}


# -- optional profiling of the server under load ----------------------------------------------


def start_profiler(
    bench: Bench, server: Server, tag: str, seconds: float | None = None
) -> tuple[Child, Path] | None:
    """py-spy on the server for `seconds` (the window's length by default)."""
    if not bench.args.py_spy:
        return None
    out = bench.logs / f"py-spy-{tag}.txt"
    child = start_profiler_of(
        bench.args.py_spy, server.child.pid, seconds or bench.args.seconds, out
    )
    return child, out


def stop_profiler(profiler: tuple[Child, Path], result: Result, *, now: bool = False) -> None:
    """Wait for the profile to be written (`now`: end the recording first)."""
    child, out = profiler
    if now:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.popen.pid, signal.SIGINT)  # py-spy writes what it has, then exits
    with contextlib.suppress(Exception):
        child.popen.wait(30)
    stop(child)
    if out.exists():
        result.notes.append(f"py-spy profile (collapsed stacks): {out}")


# -- the report --------------------------------------------------------------------------------


def now() -> str:
    return datetime.now().strftime("%H:%M:%S")


def mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.2f}×"


def size_table(product: Result | None, others: list[Result]) -> list[str]:
    """One size's figures, each server a column, then the product's ratio to each other one."""
    results = [r for r in (product, *others) if r is not None]
    against = others if product is not None else []
    head = "| metric | " + " | ".join(r.kind for r in results) + " |"
    head += "".join(f" cryptomarket / {other.kind} |" for other in against)
    lines = [head, "|---|" + "---:|" * (len(results) + len(against))]

    def row(name: str, values: list[str], rel: list[str] | None = None) -> None:
        ratios = rel if rel is not None else ["–"] * len(against)
        lines.append(f"| {name} | " + " | ".join([*values, *ratios]) + " |")

    def compare(value: Any) -> list[str] | None:
        if product is None:
            return None
        return [ratio(value(product), value(other)) for other in against]

    def pair(values: dict[str, float], a: str, b: str, fmt: str = ",.1f") -> str:
        return f"{values.get(a, math.nan):{fmt}} / {values.get(b, math.nan):{fmt}}"

    row("streams open / failed", [f"{r.opened:,} / {r.failed:,}" for r in results])
    row("time to open them (s)", [f"{r.open_seconds:.1f}" for r in results])
    row("ticks the simulator produced in the window", [f"{r.ticks}" for r in results])
    row(
        "price events delivered / expected (N × ticks)",
        [f"{r.delivered:,} / {r.expected:,}" for r in results],
    )
    row("**delivery**", [f"**{r.delivery:.2f} %**" for r in results], compare(lambda r: r.delivery))
    row(
        "delivered events/s (target)",
        [f"{r.events_per_second:,.0f} ({r.target_per_second:,.0f})" for r in results],
        compare(lambda r: r.events_per_second),
    )
    row(
        "streams that missed a tick / closed in the window",
        [f"{r.starved:,} / {r.closed_in_window:,}" for r in results],
    )
    for key in ("p50", "p90", "p99", "p99.9", "max"):
        name = (
            f"**tick-to-client latency {key} (ms)**"
            if key == "p99"
            else (f"tick-to-client latency {key} (ms)")
        )
        row(name, [f"{r.p(key):,.1f}" for r in results], compare(lambda r, k=key: r.p(k)))
    row(
        "latency after the simulator's send (each event less its tick's at a direct "
        "subscriber), p50 / p99 (ms)",
        [pair(r.net_ms, "p50", "p99") for r in results],
        compare(lambda r: r.net_ms.get("p99", math.nan)),
    )
    row(
        "per tick: first receipt, median / worst tick (ms)",
        [pair(r.first_ms, "median", "worst") for r in results],
    )
    row(
        "per tick: last receipt (fan-out done), median / worst tick (ms)",
        [pair(r.fanout_ms, "median", "worst") for r in results],
    )
    row(
        "server CPU (% of one core)",
        [f"{r.cpu_percent:.1f}" for r in results],
        compare(lambda r: r.cpu_percent),
    )
    row(
        "server CPU per 1,000 events (ms)",
        [f"{r.cpu_ms_per_1k_events:.1f}" for r in results],
        compare(lambda r: r.cpu_ms_per_1k_events),
    )
    row("RSS before the streams (MiB)", [mib(r.rss0) for r in results])
    row("RSS with N streams after warm-up (MiB)", [mib(r.rss_idle) for r in results])
    row("RSS peak in the window (MiB)", [mib(r.rss_peak) for r in results])
    row(
        "**memory per stream (KiB)**",
        [f"**{r.kb_per_conn:.1f}**" for r in results],
        compare(lambda r: r.kb_per_conn),
    )
    if any(r.gc_pauses for r in results):
        row(
            "full GC (gen 2) in the window: count / worst / total pause (ms)",
            [
                f"{r.gc_pauses['count']:.0f} / {r.gc_pauses['worst']:,.0f} / "
                f"{r.gc_pauses['total']:,.0f}"
                if r.gc_pauses
                else "–"
                for r in results
            ],
        )
    row(
        "simulator → direct subscriber latency p50 / max (ms)",
        [pair(r.upstream_ms, "p50", "max") for r in results],
    )
    row("client processes' CPU (% of one core)", [f"{r.loadgen_cpu_percent:.0f}" for r in results])
    row(
        "machine busy, all cores (%) / others' CPU in the window, before it (% of a core)",
        [f"{r.machine_busy:.0f} / {r.others_percent:.0f}, {r.others_before:.0f}" for r in results],
    )
    notes = [f"{r.kind}: {note}" for r in results for note in r.notes]
    notes += [f"{r.kind}: failed opens {r.open_errors}" for r in results if r.open_errors]
    return lines + ([""] + [f"- {note}" for note in notes] if notes else [])


def verdicts(runs: dict[tuple[str, int], Result]) -> list[str]:
    sizes = sorted({size for _, size in runs})
    out = ["| target | measured | met? |", "|---|---|---|"]

    def yes(ok: bool) -> str:
        return "yes" if ok else "**no**"

    if (top := runs.get((PRODUCT, TARGET_SIZE))) is not None:
        out.append(
            f"| {TARGET_SIZE:,} clients at ≥ {TARGET_DELIVERY:g} % delivery, one process "
            f"| {top.delivery:.2f} % | {yes(top.delivery >= TARGET_DELIVERY)} |"
        )
    if kbs := [runs[PRODUCT, s].kb_per_conn for s in sizes if (PRODUCT, s) in runs]:
        out.append(
            f"| ≤ {TARGET_KB_PER_CONN:g} KB per idle connection | "
            f"{', '.join(f'{kb:.1f}' for kb in kbs)} KiB at "
            f"{', '.join(f'{s:,}' for s in sizes if (PRODUCT, s) in runs)} | "
            f"{yes(max(kbs) * 1024 <= TARGET_KB_PER_CONN * 1000)} |"
        )
    if (small := runs.get((PRODUCT, 1000))) is not None:
        out.append(
            f"| p99 ≤ {TARGET_P99_MS_AT_1000:g} ms at 1,000 clients (timer=0) | "
            f"{small.p('p99'):.1f} ms | {yes(small.p('p99') <= TARGET_P99_MS_AT_1000)} |"
        )
    for size in sizes:
        p, b = runs.get((PRODUCT, size)), runs.get((BASELINE, size))
        if p is None or b is None:
            continue
        checks = {
            "delivery": p.delivery >= b.delivery - 0.01,
            "p99": p.p("p99") <= b.p("p99"),
            "CPU/event": p.cpu_ms_per_1k_events <= b.cpu_ms_per_1k_events,
            "memory/stream": p.kb_per_conn <= b.kb_per_conn,
        }
        behind = [name for name, ok in checks.items() if not ok]
        out.append(
            f"| ahead of sse-starlette at {size:,} clients | delivery {p.delivery:.2f} vs "
            f"{b.delivery:.2f} %, p99 {p.p('p99'):,.1f} vs {b.p('p99'):,.1f} ms, CPU per 1,000 "
            f"events {p.cpu_ms_per_1k_events:.1f} vs {b.cpu_ms_per_1k_events:.1f} ms, memory "
            f"{p.kb_per_conn:.1f} vs {b.kb_per_conn:.1f} KiB/stream | "
            f"{'yes' if not behind else '**no**: behind on ' + ', '.join(behind)} |"
        )
    for size in sizes:
        p, r = runs.get((PRODUCT, size)), runs.get((RAW, size))
        if p is None or r is None:
            continue
        cpu = (
            p.cpu_ms_per_1k_events / r.cpu_ms_per_1k_events if r.cpu_ms_per_1k_events else math.nan
        )
        p99 = p.p("p99") / r.p("p99") if r.p("p99") else math.nan
        out.append(
            f"| within {FLOOR_FACTOR:g}× of the raw floor at {size:,} clients (issue 14): CPU per "
            f"event, p99 | {cpu:.2f}×, {p99:.2f}× | {yes(max(cpu, p99) <= FLOOR_FACTOR)} |"
        )
    if kbs:
        out.append(
            f"| ≤ {TARGET_KIB_PER_STREAM:g} KiB per stream (issue 14) | "
            f"{max(kbs):.1f} KiB at most | {yes(max(kbs) <= TARGET_KIB_PER_STREAM)} |"
        )
    for size in sizes:
        if (p := runs.get((PRODUCT, size))) is not None and p.open_seconds:
            rate = p.opened / p.open_seconds
            out.append(
                f"| ≥ {TARGET_OPENS_PER_S:,} stream opens a second, signed-in users with prices "
                f"flowing (issue 14) | {rate:,.0f}/s ({p.opened:,} in {p.open_seconds:.1f} s) | "
                f"{yes(rate >= TARGET_OPENS_PER_S)} |"
            )
    return out


def revision() -> str:
    """The commit measured, and whether the product's code differed from it."""

    def git(*argv: str) -> str:
        done = subprocess.run(  # noqa: S603
            [shutil.which("git") or "git", *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "cryptomarket")
    except OSError:
        return "unknown"
    return f"commit {head}" + (" with uncommitted changes under cryptomarket/" if dirty else "")


def load(bench: Bench) -> str:
    ticker = bench.args.ticker
    simulator = "one Deribit simulator (`cryptomarket simulate --tick-interval 1"
    if not is_instrument(ticker):
        return f"{simulator}`), {ticker} only; every stream at timer=0, one event a second each"
    return (
        f"{simulator} --instrument-interval {bench.args.instrument_interval:g}`), the instrument "
        f"{ticker} only, through its `ticker.{ticker}.100ms` channel (an update about every "
        f"{bench.args.instrument_interval * 1000:g} ms, each event with the perpetual's fields); "
        "every stream at timer=0, so every update to every client"
    )


def render(bench: Bench, runs: dict[tuple[str, int], Result], machine: str, wall: float) -> str:
    args = bench.args
    sizes = sorted({size for _, size in runs})
    command = "`.venv/bin/python -m bench.bench_sse"
    command += "".join(" " + shlex.quote(a) for a in sys.argv[1:]) + "`"
    users = math.ceil(max(sizes) / bench.per_user)
    lines = [
        "# SSE fan-out: cryptomarket serve vs a minimal sse-starlette broadcaster and a raw floor"
        + (f", instrument {args.ticker}" if is_instrument(args.ticker) else ""),
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"total run time {wall / 60:.1f} min",
        f"- machine: {machine}",
        f"- code: {revision()}",
        f"- command: {command}",
        f"- load: {load(bench)}; simulator, server "
        f"and client processes share the machine; {args.warmup:g} s warm-up after the streams "
        f"are open, then a {args.seconds:g} s window; both servers keep a {args.heartbeat} s "
        "Deribit heartbeat; each server is a fresh process per size",
        f"- clients: the {args.clients} load generator (bench/clients.py), "
        f"{args.loadgens or client_processes(args.clients, max(sizes))} process(es) per server "
        "at the largest size",
        "- delivery = price events with a timestamp in the window received by all clients / "
        "(N × ticks the simulator produced in the window, from its record `sim/produced`); "
        "latency = receipt wall clock − the tick's timestamp (simulator → server → client); "
        "memory per stream = (RSS with N streams after warm-up − RSS before) / streams open, "
        f"RSS before read after {args.warm_streams} streams were opened and closed; "
        "CPU = the server process's user+sys time over the window",
        f"- the product's settings cap SSE_MAX_STREAMS_PER_USER at {bench.per_user:,}: its "
        f"streams are spread round-robin over up to {users} users (`bench-<k>`, one Deribit key)"
        if bench.per_user < max(sizes)
        else f"- the product runs with SSE_MAX_STREAMS_PER_USER={bench.per_user}",
        "",
    ]
    for size in sizes:
        lines += [f"## {size:,} clients", ""]
        others = [runs[kind, size] for kind in (BASELINE, RAW) if (kind, size) in runs]
        lines += size_table(runs.get((PRODUCT, size)), others)
        lines.append("")
    lines += ["## Targets", "", *verdicts(runs), ""]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def draw(
    runs: dict[tuple[str, int], Result], sizes: list[int], kinds: list[str], path: Path, title: str
) -> None:
    """Latency p50/p99 and memory per stream of each server, by number of clients."""
    charts.by_size(
        path,
        sizes,
        {
            f"{kind} {q}": [runs[kind, size].p(q) for size in sizes]
            for kind in kinds
            for q in ("p50", "p99")
        },
        {kind: [runs[kind, size].kb_per_conn for size in sizes] for kind in kinds},
        title,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SSE fan-out: cryptomarket vs sse-starlette")
    add = parser.add_argument
    add("--ticker", default=TICKER, help="an index name or an instrument (BTC-PERPETUAL)")
    add(
        "--sizes",
        default="",
        help=f"client counts (1000,4000,10000; {INSTRUMENT_SIZES} for an instrument)",
    )
    add("--instrument-interval", type=float, default=0.1, help="simulator: s between updates")
    add("--seconds", type=float, default=20.0, help="the measurement window")
    add("--warmup", type=float, default=5.0, help="seconds between opening and measuring")
    add("--settle", type=float, default=3.0, help="seconds between server start and RSS_0")
    add("--warm-streams", type=int, default=200, help="streams opened and closed before RSS_0")
    add("--grace", type=float, default=5.0, help="seconds to wait for the window's late ticks")
    add("--loadgens", type=int, default=0, help="client processes per server (0: as needed)")
    add("--concurrency", type=int, default=200, help="connects in flight per client process")
    add("--clients", choices=CLIENT_KINDS, default="c", help="load generator (bench/clients.py)")
    add("--nginx", action="store_true", help="the clients connect through the project's nginx")
    add("--heartbeat", type=int, default=10, help="both servers' Deribit heartbeat (s)")
    add("--servers", default=",".join(SERVERS), help="which servers to run")
    add("--gc-log", action="store_true", help="log and report the servers' full-GC pauses")
    add("--py-spy", default="", help="path of py-spy: record each server's opens and window")
    add("--tracemalloc", default="", help="dir: the product's heap snapshots, every 3 s")
    add("--quiet-wait", type=float, default=120, help="wait up to this long for a quiet machine")
    add("--quiet-threshold", type=float, default=25, help="%% of a core others may use then")
    add("--output", default=None, help="markdown file to write ('' for none)")
    add("--keep-logs", action="store_true", help="keep the servers' and clients' logs")
    args = parser.parse_args()
    instrument = is_instrument(args.ticker)
    args.sizes = args.sizes or (INSTRUMENT_SIZES if instrument else "1000,4000,10000")
    if args.output is None:
        args.output = str(RESULTS / ("sse-instrument.md" if instrument else "sse.md"))
    return args


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress, live
    args = parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    kinds = [kind.strip() for kind in args.servers.split(",") if kind.strip()]
    _soft, hard = raise_nofile()
    if hard < max(sizes) + 200:
        print(
            f"warning: RLIMIT_NOFILE hard limit {hard} is below the {max(sizes) + 200} file "
            f"descriptors a server with {max(sizes):,} streams needs: expect failed opens"
        )
    machine = machine_description()
    print(f"machine: {machine}", flush=True)

    began = time.monotonic()
    probe: UpstreamProbe | None = None

    def keep() -> bool:
        return bool(args.keep_logs or args.py_spy or args.gc_log)

    with scratch("sse-bench-", keep) as (tmp, logs):
        try:
            interval = ("--instrument-interval", str(args.instrument_interval))
            sim_url = start_simulator(tmp, logs, *interval)
            probe = UpstreamProbe(sim_url, args.ticker)
            per_user = product_streams_per_user(WANTED_STREAMS_PER_USER)
            bench = Bench(args, sim_url, tmp, logs, per_user, probe)
            runs = {(kind, size): run_one(bench, kind, size) for size in sizes for kind in kinds}
            wall = time.monotonic() - began
            text = render(bench, runs, machine, wall)
            print("\n" + text, flush=True)
            if args.output:
                out = Path(args.output)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(text)
                title = (
                    f"SSE fan-out, {args.ticker}, ~{1 / args.instrument_interval:g} updates/s "
                    "(timer=0)"
                    if is_instrument(args.ticker)
                    else "SSE fan-out, one tick per second per client (timer=0)"
                )
                draw(runs, sizes, kinds, out.with_suffix(".png"), title)
                print(f"written to {out} and {out.with_suffix('.png').name}")
            print(f"real time: {wall:.0f} s", flush=True)
        finally:
            if probe is not None:
                probe.stop()


if __name__ == "__main__":
    main()
