"""SSE fan-out through Redis: two `serve` replicas fed by one `ingest`, against one process.

    .venv/bin/python -m bench.bench_redis_fanout [--per-replica 5000] [--replicas 2] [--seconds 20]

One Deribit simulator (`cryptomarket simulate`, one tick per second, btc_usd) feeds both runs:

(a) single process: `cryptomarket serve` in embedded mode (SQLite, it holds the upstream
    connection itself) with N = `--single` streams (default: `--per-replica`), measured exactly as
    `bench/bench_sse.py` measures it (its `run_one`);
(b) distributed: PostgreSQL and Redis started as real servers on loopback (the test suite's
    `__tests__/servers.py`), `cryptomarket migrate`, `--replicas` × `cryptomarket serve` with
    REDIS_URL set (no ingest of their own) and one `cryptomarket ingest` holding the upstream
    connection; `--per-replica` streams on each replica, from their own client processes.

The users `bench-<k>` sign in with the simulator's `sim-alice` key and subscribe to btc_usd at
timer=0 through the first replica (sessions and subscriptions live in PostgreSQL, so every replica
serves the same tokens). Delivery = price events received with a timestamp in the window / (streams
× ticks the simulator produced in the window, from its own tick history); latency = receipt wall
clock − the tick's timestamp (simulator → ingest → Redis → replica → client). CPU is user+sys time
of each process over the window (psutil), PostgreSQL's summed over its whole process tree; Redis's
is read on the redis-server process, with the streams open and, beforehand, with none open.

`--rounds` (3) of each run, alternating; each kind's round with the median p99 after the
simulator's send is shown, and the target compares those p99s (bench/bench_sse.py says why).
`--nginx` puts the project's nginx in front of the single process and of the replicas
(bench/nginx_front.py).

The tables go to stdout and to `bench/results/redis_fanout.md`.
"""
# ruff: noqa: RUF001, RUF002, RUF003  # the tables use ×, − and – on purpose

from __future__ import annotations

import argparse
import contextlib
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
from cryptography.fernet import Fernet

from bench.bench_sse import (
    PRODUCT,
    TICKER,
    WANTED_STREAMS_PER_USER,
    Bench,
    Result,
    Server,
    UpstreamProbe,
    busy_seconds,
    collect,
    mib,
    now,
    product_streams_per_user,
    ratio,
    revision,
    run_one,
    signed_in,
    sse_requests,
    wait_for_quiet,
    warm_up,
)
from bench.clients import CLIENT_KINDS, LoadGens, client_processes
from bench.common import LoadWatch
from bench.nginx_front import start_front
from bench.sse_common import (
    HOST,
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

RESULTS = ROOT / "bench" / "results" / "redis_fanout.md"
LEADING = "leading: this process now holds the upstream connection"
DATABASE = "cryptomarket"
SINGLE = "single process"
SINGLE_RUN, DISTRIBUTED_RUN = "single", "distributed"
T = TypeVar("T")
TARGET_CLIENTS_FACTOR = 1.8  # issue 14: two processes on two cores vs one, at the same p99

# -- measuring processes -----------------------------------------------------------------------


@dataclass
class Meter:
    """CPU time and RSS of one process, or of it and all its children (PostgreSQL's backends)."""

    name: str
    root: psutil.Process
    tree: bool = False

    def processes(self) -> list[psutil.Process]:
        if not self.tree:
            return [self.root]
        with contextlib.suppress(psutil.Error):
            return [self.root, *self.root.children(recursive=True)]
        return [self.root]

    def cpu(self) -> float:
        total = 0.0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                total += cpu_seconds(process)
        return total

    def rss(self) -> int:
        total = 0
        for process in self.processes():
            with contextlib.suppress(psutil.Error):
                total += rss_bytes(process)
        return total


@dataclass
class Usage:
    """What the meters used over a stretch of time: % of one core each, peak RSS each."""

    seconds: float
    cpu: dict[str, float]
    peak_rss: dict[str, int]
    machine_busy: float  # % of all cores, every process on the machine
    others: float  # % of one core used by processes that are not ours (and by the kernel)
    kernel: float  # of which irq, softirq (loopback TCP) and steal, % of one core


def measure_until(meters: list[Meter], until: float) -> Usage:
    """Sample the meters from now until the wall-clock time `until` (s since the epoch)."""
    t0, machine0 = time.monotonic(), psutil.cpu_times()
    cpu0 = {meter.name: meter.cpu() for meter in meters}
    peak = {meter.name: meter.rss() for meter in meters}
    while (left := until - time.time()) > 0:
        time.sleep(min(1.0, left))
        for meter in meters:
            peak[meter.name] = max(peak[meter.name], meter.rss())
    t1, machine1 = time.monotonic(), psutil.cpu_times()
    elapsed = max(1e-9, t1 - t0)
    cpu = {meter.name: 100 * (meter.cpu() - cpu0[meter.name]) / elapsed for meter in meters}
    busy = busy_seconds(machine0, machine1)
    return Usage(
        seconds=elapsed,
        cpu=cpu,
        peak_rss=peak,
        machine_busy=100 * busy / max(1e-9, sum(machine1) - sum(machine0)),
        others=max(0.0, 100 * busy / elapsed - sum(cpu.values())),
        kernel=100 * kernel_seconds(machine0, machine1) / elapsed,
    )


def kernel_seconds(before: Any, after: Any) -> float:
    """CPU seconds no process is charged for: interrupts, softirqs and time stolen by the host."""
    names = ("irq", "softirq", "steal")
    return sum(getattr(after, name, 0.0) - getattr(before, name, 0.0) for name in names)


# -- PostgreSQL, Redis and the product's processes ----------------------------------------------


@dataclass
class Backends:
    postgres: Any  # __tests__.servers.PostgresServer
    redis: Any  # __tests__.servers.RedisServer
    simulator: psutil.Process

    def meters(self) -> list[Meter]:
        pid_file = self.postgres.data_dir / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        return [
            Meter("redis", psutil.Process(self.redis_pid())),
            Meter("postgres", psutil.Process(postmaster), tree=True),
            Meter("simulator", self.simulator),
        ]

    def redis_pid(self) -> int:
        for line in self.redis.cli("info", "server").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError("redis-server did not say its process id")

    def redis_info(self, field_name: str, section: str = "memory") -> str:
        text: str = self.redis.cli("info", section)
        for line in text.splitlines():
            if line.startswith(f"{field_name}:"):
                return line.split(":", 1)[1].strip()
        return "?"


@contextlib.contextmanager
def backends(base: Path, simulator: Child) -> Iterator[Backends]:
    """PostgreSQL (fsync off) and Redis (no persistence) of the test suite, always stopped."""
    sys.path.insert(0, str(ROOT))  # `__tests__` is importable from the repository root
    from __tests__.servers import PostgresServer, RedisServer  # noqa: PLC0415

    postgres, redis = PostgresServer(base / "postgres"), RedisServer(base / "redis")
    try:
        postgres.start()
        redis.start()
        postgres.create_database(DATABASE)
        yield Backends(postgres, redis, psutil.Process(simulator.pid))
    finally:
        for server in (redis, postgres):
            with contextlib.suppress(Exception):
                server.close()


def distributed_env(bench: Bench, found: Backends) -> dict[str, str]:
    env = clean_env(
        DEBUG="False",
        ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        DATABASE_URL=found.postgres.url(database=DATABASE),
        REDIS_URL=found.redis.url,
        DERIBIT_WS_URL=bench.sim_url,
        TRACKED_TICKERS=TICKER,
        **streams_env(bench.per_user, bench.args.heartbeat),
    )
    return env


def migrate(env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(  # noqa: S603
        [cryptomarket_command(), "migrate"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cryptomarket migrate failed: {done.stdout}{done.stderr}")


def start_replica(bench: Bench, env: dict[str, str], name: str) -> Server:
    port = free_port()
    argv = [cryptomarket_command(), "serve", "--host", HOST, "--port", str(port)]
    child = start(name.replace(" ", "-"), argv, env=env, cwd=bench.tmp, logs=bench.logs)
    wait_port(HOST, port, 60, child)
    return Server(name, child, port, [])


def start_ingest(bench: Bench, env: dict[str, str]) -> Child:
    child = start("ingest", [cryptomarket_command(), "ingest"], env=env | {"LOG_LEVEL": "INFO"},
                  cwd=bench.tmp, logs=bench.logs)  # fmt: skip
    deadline = time.monotonic() + 30
    while LEADING not in log_text(child):
        if child.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ingest never led: {child.tail()}")
        time.sleep(0.1)
    return child


def log_text(child: Child) -> str:
    if child.log_path is None or not child.log_path.exists():
        return ""
    return child.log_path.read_text(errors="replace")


def wait_healthy(port: int, timeout: float = 60) -> None:
    """Until the replica's /health says Redis is fine and ingest reports the upstream up."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=10) as client:
        while True:
            health = client.get("/health").json()
            if health["cache"] == "ok" and health["upstream"].startswith("connected"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica on {port} never became healthy: {health}")
            time.sleep(0.2)


def sign_in_users(bench: Bench, port: int, n: int) -> list[str]:
    """Session tokens of enough `bench-<k>` users for n streams, each subscribed at timer=0."""
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        users = [f"bench-{k}" for k in range(math.ceil(n / bench.per_user))]
        return [signed_in(bench, client, user) for user in users]


def problems(child: Child, limit: int = 5) -> list[str]:
    """The warnings, errors and tracebacks a process logged (the first `limit`, and a count)."""
    lines = [
        line.strip()
        for line in log_text(child).splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
    ]
    if not lines:
        return []
    shown = [f"{child.name} logged: {line[:200]}" for line in lines[:limit]]
    more = len(lines) - limit
    return shown + ([f"{child.name}: {more} more such lines"] if more > 0 else [])


# -- the distributed run -----------------------------------------------------------------------


@dataclass
class Distributed:
    """Per-replica and total results of (b), and what the shared parts used."""

    replicas: list[Result]
    total: Result
    idle: Usage | None = None  # ticks flowing, no stream open
    window: Usage | None = None
    redis_memory: str = "?"
    subscribers: str = "?"
    notes: list[str] = field(default_factory=list)


@dataclass
class Rounds:
    """Each round's p99 and p99 after the simulator's send (ms), in the order they ran."""

    single: list[tuple[float, float]]
    distributed: list[tuple[float, float]]

    def line(self) -> str:
        def listed(values: list[tuple[float, float]]) -> str:
            return ", ".join(f"{gross:,.1f} ({net:,.1f})" for gross, net in values) or "–"

        return (
            "- p99 of each round (ms; after the simulator's send in brackets), single process: "
            f"{listed(self.single)}; distributed: {listed(self.distributed)}"
        )


@dataclass
class Replica:
    server: Server
    loadgens: LoadGens
    result: Result
    meter: Meter = field(init=False)

    def __post_init__(self) -> None:
        self.meter = Meter(self.server.kind, self.server.process)


def run_distributed(bench: Bench, found: Backends) -> Distributed:
    args = bench.args
    env = distributed_env(bench, found)
    migrate(env, bench.tmp)
    names = [f"replica {chr(ord('A') + i)}" for i in range(args.replicas)]
    servers = [start_replica(bench, env, name) for name in names]
    ingest = start_ingest(bench, env)
    for server in servers:
        wait_healthy(server.port)
    tokens = sign_in_users(bench, servers[0].port, args.per_replica)
    for server in servers:
        server.requests = sse_requests(server.port, "/api/v2/sse/connection?timer=0", tokens)
    replicas: list[Replica] = []
    front = start_front(bench.tmp, bench.logs, [s.port for s in servers]) if args.nginx else None
    for server in servers:
        server.front = front
    try:
        dist = measure_distributed(bench, found, servers, ingest, replicas)
        for child in [ingest, *(server.child for server in servers)]:
            dist.notes += problems(child)
        return dist
    finally:
        for replica in replicas:
            replica.loadgens.close()
        if front is not None:
            front.stop()
        for child in [ingest, *(server.child for server in servers)]:
            stop(child)


def measure_distributed(
    bench: Bench, found: Backends, servers: list[Server], ingest: Child, replicas: list[Replica]
) -> Distributed:
    args, n = bench.args, bench.args.per_replica
    wait_for_quiet(args.quiet_wait, args.quiet_threshold)
    time.sleep(args.settle)
    for server in servers:  # as the single process is, before its RSS_0
        warm_up(bench, server, server.kind.replace(" ", "-"))
    shared = [*found.meters(), Meter("ingest", psutil.Process(ingest.pid))]
    shared.append(Meter("benchmark", psutil.Process()))
    if (front := servers[0].front) is not None:
        shared.append(Meter("nginx", psutil.Process(front.child.pid), tree=True))
    replica_meters = [Meter(server.kind, server.process) for server in servers]
    print(f"[{now()}] distributed: {args.idle:g} s with ticks flowing and no stream open")
    idle = measure_until([*replica_meters, *shared], time.time() + args.idle)
    processes = args.loadgens or client_processes(args.clients, n)
    for server in servers:
        result = Result(server.kind, n, float(args.seconds))
        result.rss0 = rss_bytes(server.process)
        tag = server.kind.replace(" ", "-")
        loadgens = LoadGens(processes, bench.logs, tag, args.clients)
        replicas.append(Replica(server, loadgens, result))
    open_streams(bench, replicas)
    time.sleep(args.warmup)
    for replica in replicas:
        replica.result.rss_idle = rss_bytes(replica.server.process)
    return window(bench, found, replicas, shared, idle)


def open_streams(bench: Bench, replicas: list[Replica]) -> None:
    """Every replica's streams at once, each from its own client processes."""
    n, concurrency = bench.args.per_replica, bench.args.concurrency
    print(f"[{now()}] distributed: opening {n:,} streams on each of {len(replicas)} replicas")

    def one(replica: Replica) -> dict[str, Any]:
        server = replica.server
        return replica.loadgens.open(n, server.client_port, server.requests, concurrency)

    with ThreadPoolExecutor(len(replicas)) as pool:
        answers = list(pool.map(one, replicas))
    for replica, opened in zip(replicas, answers, strict=True):
        result = replica.result
        result.opened, result.failed = opened["opened"], opened["failed"]
        result.open_seconds, result.open_errors = opened["seconds"], opened["errors"]
        print(
            f"[{now()}] {result.kind}: {result.opened:,} open, {result.failed:,} failed in "
            f"{result.open_seconds:.1f} s",
            flush=True,
        )


def window(
    bench: Bench, found: Backends, replicas: list[Replica], shared: list[Meter], idle: Usage
) -> Distributed:
    args = bench.args
    w0 = int(time.time() * 1000) + 300
    w1 = w0 + int(args.seconds * 1000)
    for replica in replicas:
        replica.loadgens.arm(w0, w1)
    time.sleep(max(0.0, w0 / 1000 - time.time()))
    clients = [
        Meter(f"clients {r.server.kind} {i}", process)
        for r in replicas
        for i, process in enumerate(r.loadgens.processes)
    ]
    usage = measure_until([*(r.meter for r in replicas), *shared, *clients], w1 / 1000)
    busy_others = LoadWatch.busy_processes(threshold=10.0)  # a 1 s look, within the grace
    time.sleep(args.grace)  # the window's last ticks may still be on their way
    reports = [replica.loadgens.report() for replica in replicas]
    for replica, report in zip(replicas, reports, strict=True):
        fill(bench, replica.result, report, usage, (w0, w1))
    total = totals(bench, [r.result for r in replicas], [x for rep in reports for x in rep], w0, w1)
    total.cpu_percent = sum(r.result.cpu_percent for r in replicas)
    total.loadgen_cpu_percent = sum(r.result.loadgen_cpu_percent for r in replicas)
    out = Distributed([r.result for r in replicas], total, idle, usage)
    out.notes += [f"busy outside the benchmark just after the window: {p}" for p in busy_others]
    out.redis_memory = mib(int(found.redis_info("used_memory")))
    out.subscribers = found.redis.cli("pubsub", "numsub", "cryptomarket:events").split()[-1]
    print(f"[{now()}] distributed: {total.delivery:.2f}% delivered, p99 {total.p('p99')} ms")
    return out


def fill(
    bench: Bench, result: Result, reports: list[dict[str, Any]], usage: Usage, span: tuple[int, int]
) -> None:
    """One replica's figures: its clients' counts, its CPU and RSS over the window [w0, w1)."""
    collect(bench, reports, result, *span)
    result.cpu_percent = usage.cpu[result.kind]
    result.rss_peak = usage.peak_rss[result.kind]
    result.loadgen_cpu_percent = sum(
        value for name, value in usage.cpu.items() if name.startswith(f"clients {result.kind} ")
    )
    result.machine_busy, result.others_percent = usage.machine_busy, usage.others


def totals(
    bench: Bench, parts: list[Result], reports: list[dict[str, Any]], w0: int, w1: int
) -> Result:
    total = Result("all replicas", sum(p.size for p in parts), parts[0].seconds)
    total.opened, total.failed = sum(p.opened for p in parts), sum(p.failed for p in parts)
    total.open_seconds = max(p.open_seconds for p in parts)
    collect(bench, reports, total, w0, w1)
    total.rss0, total.rss_idle = sum(p.rss0 for p in parts), sum(p.rss_idle for p in parts)
    total.rss_peak = sum(p.rss_peak for p in parts)
    total.machine_busy, total.others_percent = parts[0].machine_busy, parts[0].others_percent
    return total


# -- the report --------------------------------------------------------------------------------


def result_rows(single: Result | None, results: list[Result]) -> list[tuple[str, list[str]]]:
    def lat(key: str) -> list[str]:
        return [f"{r.p(key):,.1f}" for r in results]

    def versus(key: str) -> list[str]:
        return [ratio(r.p(key), single.p(key)) if single else "–" for r in results]

    def pair(values: dict[str, float]) -> str:
        return f"{values.get('median', math.nan):,.1f} / {values.get('worst', math.nan):,.1f}"

    # fmt: off
    return [
        ("streams open / failed", [f"{r.opened:,} / {r.failed:,}" for r in results]),
        ("time to open them (s)", [f"{r.open_seconds:.1f}" for r in results]),
        ("ticks the simulator produced in the window", [f"{r.ticks}" for r in results]),
        ("price events delivered / expected",
         [f"{r.delivered:,} / {r.expected:,}" for r in results]),
        ("**delivery**", [f"**{r.delivery:.2f} %**" for r in results]),
        ("delivered events/s (target)",
         [f"{r.events_per_second:,.0f} ({r.target_per_second:,.0f})" for r in results]),
        ("streams that missed a tick / closed in the window",
         [f"{r.starved:,} / {r.closed_in_window:,}" for r in results]),
        ("tick-to-client latency p50 (ms)", lat("p50")),
        ("tick-to-client latency p90 (ms)", lat("p90")),
        ("**tick-to-client latency p99 (ms)**", [f"**{v}**" for v in lat("p99")]),
        ("tick-to-client latency p99.9 / max (ms)",
         [f"{r.p('p99.9'):,.1f} / {r.p('max'):,.1f}" for r in results]),
        ("p50 / single process", versus("p50")),
        ("**p99 / single process**", versus("p99")),
        ("latency after the simulator's send (each event less its tick's at a direct "
         "subscriber), p50 / p99 (ms)",
         [f"{r.net('p50'):,.1f} / {r.net('p99'):,.1f}" for r in results]),
        ("**that p99 / single process's**",
         [ratio(r.net("p99"), single.net("p99")) if single else "–" for r in results]),
        ("per tick: first receipt, median / worst tick (ms)", [pair(r.first_ms) for r in results]),
        ("per tick: last receipt, median / worst tick (ms)", [pair(r.fanout_ms) for r in results]),
        ("server CPU (% of one core)", [f"{r.cpu_percent:.1f}" for r in results]),
        ("server CPU per 1,000 events (ms)", [f"{r.cpu_ms_per_1k_events:.1f}" for r in results]),
        ("server RSS before the streams / with them / peak (MiB)",
         [f"{mib(r.rss0)} / {mib(r.rss_idle)} / {mib(r.rss_peak)}" for r in results]),
        ("memory per stream (KiB)", [f"{r.kb_per_conn:.1f}" for r in results]),
        ("client processes' CPU (% of one core)",
         [f"{r.loadgen_cpu_percent:.0f}" for r in results]),
        ("machine busy, all cores (%) / others' CPU (% of a core)",
         [f"{r.machine_busy:.0f} / {r.others_percent:.0f}" for r in results]),
    ]
    # fmt: on


def results_table(single: Result | None, dist: Distributed | None) -> list[str]:
    results = ([single] if single else []) + ([*dist.replicas, dist.total] if dist else [])
    heads = [SINGLE if r is single else r.kind for r in results]
    lines = ["| metric | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(results)]
    for name, values in result_rows(single, results):
        lines.append(f"| {name} | " + " | ".join(values) + " |")
    notes = [f"{SINGLE if r is single else r.kind}: {note}" for r in results for note in r.notes]
    notes += [f"{r.kind}: failed opens {r.open_errors}" for r in results if r.open_errors]
    return lines + ([""] + [f"- {note}" for note in notes] if notes else [])


def shared_table(dist: Distributed) -> list[str]:
    idle, busy = dist.idle, dist.window
    assert idle is not None and busy is not None  # noqa: S101  # set by every run
    clients = dist.total.opened
    per_1k = busy.cpu["redis"] / (clients / 1000) if clients else math.nan
    # fmt: off
    rows = [
        ("**Redis CPU (% of one core)**", f"{idle.cpu['redis']:.2f}", f"{busy.cpu['redis']:.2f}"),
        ("**Redis CPU per 1,000 clients (% of one core)**", "–", f"{per_1k:.3f}"),
        ("Redis memory in use / RSS peak (MiB)", "–",
         f"{dist.redis_memory} / {mib(busy.peak_rss['redis'])}"),
        ("Redis pub/sub subscribers of cryptomarket:events", "–", dist.subscribers),
        ("ingest CPU (% of one core) / RSS peak (MiB)",
         f"{idle.cpu['ingest']:.2f} / {mib(idle.peak_rss['ingest'])}",
         f"{busy.cpu['ingest']:.2f} / {mib(busy.peak_rss['ingest'])}"),
        ("PostgreSQL CPU, all its processes (% of one core)",
         f"{idle.cpu['postgres']:.2f}", f"{busy.cpu['postgres']:.2f}"),
        ("simulator CPU (% of one core)", f"{idle.cpu['simulator']:.2f}",
         f"{busy.cpu['simulator']:.2f}"),
        ("replicas' CPU (% of one core, summed)",
         f"{sum(idle.cpu[r.kind] for r in dist.replicas):.1f}", f"{dist.total.cpu_percent:.1f}"),
        ("machine busy, all cores (%) / others' CPU (% of a core)",
         f"{idle.machine_busy:.0f} / {idle.others:.0f}",
         f"{busy.machine_busy:.0f} / {busy.others:.0f}"),
        ("of others: irq, softirq and steal (% of a core)",
         f"{idle.kernel:.0f}", f"{busy.kernel:.0f}"),
    ]
    if "nginx" in busy.cpu:
        rows.append(("nginx CPU, all its processes (% of one core)",
                     f"{idle.cpu['nginx']:.1f}", f"{busy.cpu['nginx']:.1f}"))
    # fmt: on
    head = f"| shared part | no stream open ({idle.seconds:.0f} s) | {clients:,} streams open |"
    lines = [head, "|---|---:|---:|"]
    lines += [f"| {name} | {a} | {b} |" for name, a, b in rows]
    return lines + ([""] + [f"- {note}" for note in dist.notes] if dist.notes else [])


def command() -> str:
    return "`.venv/bin/python -m bench.bench_redis_fanout" + "".join(
        " " + shlex.quote(a) for a in sys.argv[1:]
    ) + "`"  # fmt: skip


def render(  # noqa: PLR0917  # the report of everything run_all measured
    bench: Bench,
    single: Result | None,
    dist: Distributed | None,
    rounds: Rounds,
    machine: str,
    wall: float,
) -> str:
    args = bench.args
    n_single = args.single or args.per_replica
    users = math.ceil(max(n_single, args.per_replica) / bench.per_user)
    lines = [
        "# SSE fan-out through Redis: replicas fed by one ingest vs one process",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"total run time {wall / 60:.1f} min",
        f"- machine: {machine}",
        f"- code: {revision()}",
        f"- command: {command()}",
        "- load: one Deribit simulator (`cryptomarket simulate --tick-interval 1`), btc_usd only; "
        "every stream at timer=0, so one price event per second per client; every process "
        f"shares the machine; {args.warmup:g} s warm-up after the streams are open, then a "
        f"{args.seconds:g} s window; Deribit heartbeat {args.heartbeat} s; {args.rounds} "
        "round(s) of each run, alternating, and the round of each with the median p99 after the "
        "simulator's send shown",
        (
            "- nginx in front (`--nginx`): the project's nginx/ configuration, the clients "
            "connect to it, and it spreads the distributed run's streams over the replicas "
            "(so a replica's row is its clients', not what it served)\n"
            if args.nginx
            else ""
        )
        + f"- clients: the {args.clients} load generator (bench/clients.py), "
        f"{args.loadgens or client_processes(args.clients, args.per_replica)} process(es) per "
        "server",
        f"- single process: `cryptomarket serve`, embedded mode (SQLite, its own ingest), "
        f"{n_single:,} streams, measured as in `bench/bench_sse.py`",
        f"- distributed: PostgreSQL 15 and Redis on loopback, one `cryptomarket ingest`, "
        f"{args.replicas} × `cryptomarket serve` with REDIS_URL and DEBUG=False, "
        f"{args.per_replica:,} streams on each; no Celery worker (fan-out does not use it)",
        "- delivery = price events with a timestamp in the window received / (streams × ticks "
        "the simulator produced in the window); latency = receipt wall clock − the tick's "
        "timestamp; CPU = user+sys time over the window; memory per stream = (RSS with the "
        "streams after warm-up − RSS before) / streams open",
        "- Redis's work per tick does not grow with the clients: ingest sends one PUBLISH (plus "
        "an XADD to the capped stream and a SET of the latest price) and Redis passes it to one "
        "subscription per replica; Redis CPU per 1,000 clients is its CPU over the window / "
        "(streams open / 1,000), so it falls as clients are added",
        f"- streams spread round-robin over {users} user(s) `bench-<k>` "
        f"(SSE_MAX_STREAMS_PER_USER={bench.per_user}, one Deribit key)",
        "",
        "## Delivery and latency",
        "",
        *results_table(single, dist),
        "",
    ]
    if dist is not None:
        lines += ["## Redis, ingest and the rest", "", *shared_table(dist), ""]
    if single is not None and dist is not None:
        lines += ["## Target", "", *target_table(single, dist), "", rounds.line(), ""]
    return "\n".join(lines)


def target_table(single: Result, dist: Distributed) -> list[str]:
    """Issue 14: the replicas serve at least TARGET_CLIENTS_FACTOR times the clients of the one
    process, at no worse a p99 (and deliver as much). The p99 after the simulator's send: what
    the servers add, without the simulator's send delay that each run draws anew."""
    factor = dist.total.opened / single.opened if single.opened else math.nan
    p99_single, p99_dist = single.net("p99"), dist.total.net("p99")
    met = (
        factor >= TARGET_CLIENTS_FACTOR
        and p99_dist <= p99_single
        and dist.total.delivery >= single.delivery - 0.01
    )
    return [
        "| target | measured | met? |",
        "|---|---|---|",
        f"| {len(dist.replicas)} replicas through Redis serve ≥ {TARGET_CLIENTS_FACTOR:g}× the "
        "clients of one process at the same p99 (issue 14) | "
        f"{dist.total.opened:,} vs {single.opened:,} clients ({factor:.2f}×), "
        f"p99 after the simulator's send {p99_dist:,.1f} vs {p99_single:,.1f} ms (from the "
        f"tick's timestamp: {dist.total.p('p99'):,.1f} vs {single.p('p99'):,.1f}), delivery "
        f"{dist.total.delivery:.2f} vs {single.delivery:.2f} % | {'yes' if met else '**no**'} |",
    ]


# -- main --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SSE fan-out through Redis vs one process")
    add = parser.add_argument
    add("--per-replica", type=int, default=4500, help="streams on each replica")
    add("--replicas", type=int, default=2, help="`serve` replicas in the distributed run")
    add("--single", type=int, default=5000, help="streams of the single process (0: --per-replica)")
    add("--runs", default="single,distributed", help="which runs: single, distributed or both")
    add("--rounds", type=int, default=3, help="runs of each kind, alternating (median shown)")
    add("--seconds", type=float, default=20.0, help="the measurement window")
    add("--warmup", type=float, default=5.0, help="seconds between opening and measuring")
    add("--settle", type=float, default=3.0, help="seconds between server start and RSS_0")
    add("--warm-streams", type=int, default=200, help="streams opened and closed before RSS_0")
    add("--idle", type=float, default=10.0, help="seconds measured with no stream open")
    add("--grace", type=float, default=5.0, help="seconds to wait for the window's late ticks")
    add("--loadgens", type=int, default=0, help="client processes per server (0: as needed)")
    add("--concurrency", type=int, default=200, help="connects in flight per client process")
    add("--clients", choices=CLIENT_KINDS, default="c", help="load generator (bench/clients.py)")
    add("--nginx", action="store_true", help="the clients connect through the project's nginx")
    add("--heartbeat", type=int, default=10, help="Deribit heartbeat of serve and ingest (s)")
    add("--quiet-wait", type=float, default=120, help="wait up to this long for a quiet machine")
    add("--quiet-threshold", type=float, default=25, help="%% of a core others may use then")
    add("--output", default=str(RESULTS), help="markdown file to write ('' for none)")
    add("--keep-logs", action="store_true", help="keep the servers' and clients' logs")
    # What bench_sse's run_one reads too: index prices, no profiling.
    parser.set_defaults(gc_log=False, py_spy="", tracemalloc="", ticker=TICKER)
    return parser.parse_args()


def run_all(args: argparse.Namespace, tmp: Path, logs: Path) -> tuple[Bench, str]:
    """`--rounds` of each run, alternating, so a drift of the machine falls on both alike; the
    tables show each kind's round with the median p99 after the simulator's send."""
    runs = {run.strip() for run in args.runs.split(",")}
    sim_url = start_simulator(tmp, logs)
    simulator = next(child for child in running() if child.name == "simulator")
    per_user = product_streams_per_user(WANTED_STREAMS_PER_USER)
    bench = Bench(args, sim_url, tmp, logs, per_user, UpstreamProbe(sim_url, TICKER))
    started = time.monotonic()
    singles: list[Result] = []
    dists: list[Distributed] = []
    tokens: dict[str, dict[str, str]] = {SINGLE_RUN: {}, DISTRIBUTED_RUN: {}}  # per database
    try:
        with backends(tmp / "servers", simulator) as found:
            for round_ in range(1, args.rounds + 1):
                print(f"[{now()}] round {round_} of {args.rounds}", flush=True)
                if SINGLE_RUN in runs:
                    bench.tokens = tokens[SINGLE_RUN]
                    singles.append(run_one(bench, PRODUCT, args.single or args.per_replica))
                if DISTRIBUTED_RUN in runs:
                    bench.tokens = tokens[DISTRIBUTED_RUN]
                    dists.append(run_distributed(bench, found))
    finally:
        bench.probe.stop()
    single = median_of(singles, lambda result: result.net("p99"))
    dist = median_of(dists, lambda run: run.total.net("p99"))
    rounds = Rounds(
        [(r.p("p99"), r.net("p99")) for r in singles],
        [(d.total.p("p99"), d.total.net("p99")) for d in dists],
    )
    text = render(bench, single, dist, rounds, machine_description(), time.monotonic() - started)
    return bench, text


def median_of(items: list[T], key: Callable[[T], float]) -> T | None:
    """The item at the median of `key` (the lower middle one of an even count)."""
    ranked = sorted(items, key=key)
    return ranked[(len(ranked) - 1) // 2] if ranked else None


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress, live
    args = parse_args()
    _soft, hard = raise_nofile()
    if hard < args.per_replica + 200:
        print(f"warning: RLIMIT_NOFILE hard limit {hard} is low for {args.per_replica:,} streams")
    print(f"machine: {machine_description()}", flush=True)

    with scratch("redis-fanout-bench-", lambda: bool(args.keep_logs)) as (tmp, logs):
        _bench, text = run_all(args, tmp, logs)
        print("\n" + text, flush=True)
        if args.output:
            out = Path(args.output)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
            print(f"written to {out}")


if __name__ == "__main__":
    main()
