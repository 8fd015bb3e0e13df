"""SSE fan-out through Redis: two `serve` replicas fed by one `ingest`, against one process.

    .venv/bin/python -m bench.bench_redis_fanout [--per-replica 5000] [--replicas 2] [--seconds 20]

One Deribit simulator (`cryptomarket simulate`, one tick per second, btc_usd) feeds both runs:

(a) single process: `cryptomarket serve` in embedded mode (SQLite, it holds the upstream
    connection itself) with N = `--single` streams (default: `--per-replica`), measured exactly as
    `bench/bench_sse.py` measures it (bench/sse_run.py's `run_one`);
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
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from bench.clients import CLIENT_KINDS, LoadGens, client_processes
from bench.common import LoadWatch
from bench.distributed_servers import (
    Backends,
    backends,
    distributed_env,
    migrate,
    problems,
    sign_in_users,
    start_ingest,
    start_replica,
    wait_healthy,
)
from bench.machine_load import Meter, Usage, measure_until, now, wait_for_quiet
from bench.nginx_front import start_front
from bench.sse_common import (
    ROOT,
    Child,
    machine_description,
    raise_nofile,
    rss_bytes,
    running,
    scratch,
    start_simulator,
    stop,
)
from bench.sse_measure import Result, UpstreamProbe, collect
from bench.sse_report import header, mib, ratio, result_notes, result_rows
from bench.sse_run import run_one, warm_up
from bench.sse_servers import (
    PRODUCT,
    TICKER,
    WANTED_STREAMS_PER_USER,
    Bench,
    Server,
    product_streams_per_user,
    sse_requests,
)

RESULTS = ROOT / "bench" / "results" / "redis_fanout.md"
SINGLE = "single process"
SINGLE_RUN, DISTRIBUTED_RUN = "single", "distributed"
T = TypeVar("T")
TARGET_CLIENTS_FACTOR = 1.8  # issue 14: two processes on two cores vs one, at the same p99


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
    others_before = wait_for_quiet(args.quiet_wait, args.quiet_threshold)
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
        result.others_before = others_before
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
        replica.result.record_opens(opened)
        print(f"[{now()}] {replica.result.kind}: {replica.result.opens()}")


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


def results_table(single: Result | None, dist: Distributed | None) -> list[str]:
    """The single process and each replica a column, then the replicas' ratios to the single."""
    results = ([single] if single else []) + ([*dist.replicas, dist.total] if dist else [])
    heads = [SINGLE if r is single else r.kind for r in results]
    lines = ["| metric | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(results)]
    rows = [(name, values) for name, values, _figure in result_rows(results)]
    if single is not None:
        versus: list[tuple[str, Callable[[Result], float]]] = [
            ("p50 / single process", lambda r: r.p("p50")),
            ("**p99 / single process**", lambda r: r.p("p99")),
            ("**p99 after the simulator's send / single process's**", lambda r: r.net("p99")),
        ]
        for name, figure in versus:
            rows.append((name, [ratio(figure(r), figure(single)) for r in results]))
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows]
    return lines + result_notes(results, heads)


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
    title = "SSE fan-out through Redis: replicas fed by one ingest vs one process"
    lines = [
        *header(title, "bench.bench_redis_fanout", wall, machine),
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
    # What sse_run's run_one reads too: index prices, no profiling.
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
