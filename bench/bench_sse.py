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
import math
import sys
import time
from pathlib import Path

from bench import charts
from bench.clients import CLIENT_KINDS, client_processes
from bench.sse_common import ROOT, machine_description, raise_nofile, scratch, start_simulator
from bench.sse_measure import Result, UpstreamProbe
from bench.sse_report import header, ratio, result_notes, result_rows
from bench.sse_run import run_one
from bench.sse_servers import (
    BASELINE,
    PRODUCT,
    RAW,
    SERVERS,
    TICKER,
    WANTED_STREAMS_PER_USER,
    Bench,
    product_streams_per_user,
)
from cryptomarket.instruments.names import is_instrument

RESULTS = ROOT / "bench" / "results"
INSTRUMENT_SIZES = "500,1000,2000"  # ten updates a second: 2,000 streams are 20,000 events/s

# The targets.
TARGET_SIZE = 10_000
TARGET_DELIVERY = 99.0  # % at TARGET_SIZE clients
TARGET_KB_PER_CONN = 20.0
TARGET_P99_MS_AT_1000 = 50.0
FLOOR_FACTOR = 1.5  # issue 14: CPU per event and p99 within this of the raw floor
TARGET_KIB_PER_STREAM = 10.0  # issue 14
TARGET_OPENS_PER_S = 2_000  # issue 14: 4,000 streams in 2 s


def size_table(product: Result | None, others: list[Result]) -> list[str]:
    """One size's figures, each server a column, then the product's ratio to each other one."""
    results = [r for r in (product, *others) if r is not None]
    against = others if product is not None else []
    head = "| metric | " + " | ".join(r.kind for r in results) + " |"
    head += "".join(f" cryptomarket / {other.kind} |" for other in against)
    lines = [head, "|---|" + "---:|" * (len(results) + len(against))]
    for name, values, figure in result_rows(results):
        ratios = ["–"] * len(against)
        if figure is not None and product is not None:
            ratios = [ratio(figure(product), figure(other)) for other in against]
        lines.append(f"| {name} | " + " | ".join([*values, *ratios]) + " |")
    return lines + result_notes(results, [r.kind for r in results])


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
    users = math.ceil(max(sizes) / bench.per_user)
    title = "SSE fan-out: cryptomarket serve vs a minimal sse-starlette broadcaster and a raw floor"
    title += f", instrument {args.ticker}" if is_instrument(args.ticker) else ""
    lines = [
        *header(title, "bench.bench_sse", wall, machine),
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
