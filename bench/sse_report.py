"""SSE runs as markdown: the rows every fan-out report shows for a `Result`, and its header.

bench_sse puts servers side by side with the product's ratio to each; bench_redis_fanout puts the
single process beside the replicas. Both show the same figures, in the same words, from here.
"""
# ruff: noqa: RUF001, RUF003  # the tables use ×, − and – on purpose

from __future__ import annotations

import math
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime

from bench.sse_common import ROOT
from bench.sse_measure import Result

# A row: its name, a cell per result, and the figure compared across results (None: not compared).
Row = tuple[str, list[str], Callable[[Result], float] | None]


def mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.2f}×"


def pair(values: dict[str, float], a: str, b: str) -> str:
    return f"{values.get(a, math.nan):,.1f} / {values.get(b, math.nan):,.1f}"


def _latency(key: str) -> Callable[[Result], float]:
    return lambda result: result.p(key)


def result_rows(results: list[Result]) -> list[Row]:
    """Streams, delivery, latency, CPU and memory of each result, in the reports' order."""
    rows: list[Row] = [
        ("streams open / failed", [f"{r.opened:,} / {r.failed:,}" for r in results], None),
        ("time to open them (s)", [f"{r.open_seconds:.1f}" for r in results], None),
        ("ticks the simulator produced in the window", [f"{r.ticks}" for r in results], None),
        (
            "price events delivered / expected (streams × ticks)",
            [f"{r.delivered:,} / {r.expected:,}" for r in results],
            None,
        ),
        ("**delivery**", [f"**{r.delivery:.2f} %**" for r in results], lambda r: r.delivery),
        (
            "delivered events/s (target)",
            [f"{r.events_per_second:,.0f} ({r.target_per_second:,.0f})" for r in results],
            lambda r: r.events_per_second,
        ),
        (
            "streams that missed a tick / closed in the window",
            [f"{r.starved:,} / {r.closed_in_window:,}" for r in results],
            None,
        ),
    ]
    for key in ("p50", "p90", "p99", "p99.9", "max"):
        name = f"tick-to-client latency {key} (ms)"
        name = f"**{name}**" if key == "p99" else name
        rows.append((name, [f"{r.p(key):,.1f}" for r in results], _latency(key)))
    rows += [
        (
            "latency after the simulator's send (each event less its tick's at a direct "
            "subscriber), p50 / p99 (ms)",
            [pair(r.net_ms, "p50", "p99") for r in results],
            lambda r: r.net("p99"),
        ),
        (
            "per tick: first receipt, median / worst tick (ms)",
            [pair(r.first_ms, "median", "worst") for r in results],
            None,
        ),
        (
            "per tick: last receipt (fan-out done), median / worst tick (ms)",
            [pair(r.fanout_ms, "median", "worst") for r in results],
            None,
        ),
        (
            "server CPU (% of one core)",
            [f"{r.cpu_percent:.1f}" for r in results],
            lambda r: r.cpu_percent,
        ),
        (
            "server CPU per 1,000 events (ms)",
            [f"{r.cpu_ms_per_1k_events:.1f}" for r in results],
            lambda r: r.cpu_ms_per_1k_events,
        ),
        (
            "server RSS before the streams / with them after warm-up / peak (MiB)",
            [f"{mib(r.rss0)} / {mib(r.rss_idle)} / {mib(r.rss_peak)}" for r in results],
            None,
        ),
        (
            "**memory per stream (KiB)**",
            [f"**{r.kb_per_conn:.1f}**" for r in results],
            lambda r: r.kb_per_conn,
        ),
    ]
    if any(r.gc_pauses for r in results):
        rows.append(
            (
                "full GC (gen 2) in the window: count / worst / total pause (ms)",
                [
                    f"{r.gc_pauses['count']:.0f} / {r.gc_pauses['worst']:,.0f} / "
                    f"{r.gc_pauses['total']:,.0f}"
                    if r.gc_pauses
                    else "–"
                    for r in results
                ],
                None,
            )
        )
    if any(r.upstream_ms for r in results):
        rows.append(
            (
                "simulator → direct subscriber latency p50 / max (ms)",
                [pair(r.upstream_ms, "p50", "max") for r in results],
                None,
            )
        )
    rows += [
        (
            "client processes' CPU (% of one core)",
            [f"{r.loadgen_cpu_percent:.0f}" for r in results],
            None,
        ),
        (
            "machine busy, all cores (%) / others' CPU in the window, before it (% of a core)",
            [
                f"{r.machine_busy:.0f} / {r.others_percent:.0f}, {r.others_before:.0f}"
                for r in results
            ],
            None,
        ),
    ]
    return rows


def result_notes(results: list[Result], labels: list[str]) -> list[str]:
    """What the runs noted, and why opens failed, as markdown list items after a blank line."""
    notes = [
        f"{label}: {note}" for r, label in zip(results, labels, strict=True) for note in r.notes
    ]
    notes += [
        f"{label}: failed opens {r.open_errors}"
        for r, label in zip(results, labels, strict=True)
        if r.open_errors
    ]
    return [""] + [f"- {note}" for note in notes] if notes else []


def header(title: str, module: str, wall: float, machine: str) -> list[str]:
    """A report's title, then when, where, which code and which command (`module`'s)."""
    command = f"`.venv/bin/python -m {module}"
    command += "".join(" " + shlex.quote(a) for a in sys.argv[1:]) + "`"
    return [
        f"# {title}",
        "",
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"total run time {wall / 60:.1f} min",
        f"- machine: {machine}",
        f"- code: {revision()}",
        f"- command: {command}",
    ]


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
