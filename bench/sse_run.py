"""One run of one SSE server: start it, open N streams, measure a window, stop it.

Shared by bench_sse (every server at every size) and bench_redis_fanout (its single process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import psutil

from bench.clients import LoadGens, client_processes
from bench.machine_load import busy_seconds, now, wait_for_quiet
from bench.nginx_front import start_front
from bench.sse_common import Child, cpu_seconds, rss_bytes, running, stop
from bench.sse_common import start_profiler as start_profiler_of
from bench.sse_measure import Result, collect, gc_pauses
from bench.sse_servers import (
    BASELINE,
    PRODUCT,
    RAW,
    Bench,
    Server,
    start_baseline,
    start_product,
)


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
        result.record_opens(opened)
        print(f"[{now()}] {kind} x {n}: {result.opens()}; warming up {args.warmup:g} s")
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


def own_cpu(server: Server, loadgens: LoadGens) -> float:
    """CPU seconds of every process of this benchmark (server, clients, simulator, ourselves)."""
    total = cpu_seconds(server.process) + loadgens.cpu() + cpu_seconds(psutil.Process())
    for child in running():
        if child.name == "simulator":
            with contextlib.suppress(psutil.Error):
                total += cpu_seconds(psutil.Process(child.pid))
    return total


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
