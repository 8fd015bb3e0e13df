"""CPU and memory of the processes a benchmark runs, and of everything else on the machine.

This machine has two cores and is shared: a benchmark waits for a quiet machine before it starts,
and reports what others used while it measured, beside its own processes' figures.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psutil

from bench.sse_common import cpu_seconds, rss_bytes, running


def now() -> str:
    """The time of day, for progress lines."""
    return datetime.now().strftime("%H:%M:%S")


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
