"""Helpers shared by the price-store benchmarks (`bench_history`, `bench_ingest`).

The machine description, percentiles, markdown tables, a report that prints as it goes and is
written to `bench/results/<name>.md` with the date, machine and exact command, a watch on the
CPU the rest of the machine uses meanwhile (this box has 2 cores and is shared), and a throwaway
PostgreSQL server that is always closed.
"""

# ruff: noqa: PLC0415, S608  (a lazy test-suite import; SQL built from constants)

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TICKERS = ("btc_usd", "eth_usd")


# The machine.


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


def postgres_binary_version() -> str | None:
    """`postgres --version` of the server binaries the test servers use, when installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    binary = str(found[-1]) if found else shutil.which("postgres")
    if binary is None:
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(  # noqa: S603
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.strip() or None
    return None


def machine(postgres_version: str | None = None) -> list[tuple[str, str]]:
    """(what, value) rows: CPU model, cores, RAM, OS, Python, database and driver versions."""
    memory = psutil.virtual_memory().total / 2**30
    physical = psutil.cpu_count(logical=False)
    logical = psutil.cpu_count(logical=True)
    return [
        ("CPU", cpu_model()),
        (
            "cores",
            f"{logical} logical ({physical} physical), affinity {len(os.sched_getaffinity(0))}",
        ),
        ("RAM", f"{memory:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("PostgreSQL", postgres_version or postgres_binary_version() or "not installed"),
        ("SQLite", f"{sqlite3.sqlite_version} (Python sqlite3 module, also under aiosqlite)"),
        (
            "drivers",
            ", ".join(
                f"{name} {_package(name)}"
                for name in ("sqlalchemy", "asyncpg", "aiosqlite", "psycopg", "pydantic")
            ),
        ),
    ]


def command_line() -> str:
    """The command exactly as it was typed (interpreter path and all arguments)."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


# Numbers.


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max/mean of durations given in seconds, in milliseconds."""
    ms = [value * 1000 for value in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else math.nan,
        "mean": sum(ms) / len(ms) if ms else math.nan,
    }


def fmt(value: float, digits: int = 2) -> str:
    if isinstance(value, int):
        return f"{value:,}"
    if math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers are right-aligned, everything else left-aligned."""
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [
        max([len(header), *(len(row[i]) for row in cells)]) for i, header in enumerate(headers)
    ]

    def numeric(i: int) -> bool:
        return bool(rows) and all(
            isinstance(row[i], int | float)
            or str(row[i]).replace(",", "").replace(".", "").replace("-", "").isdigit()
            for row in rows
        )

    right = [numeric(i) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        padded = (
            value.rjust(widths[i]) if right[i] else value.ljust(widths[i])
            for i, value in enumerate(values)
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (width + 1) + ":" if right[i] else "-" * (width + 2)
            for i, width in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(headers), rule, *(line(row) for row in cells)])


# The machine's other load: the box is shared, so say how busy it was while we measured.


class LoadWatch:
    """CPU seconds of the whole machine and of this process tree (our servers included).

    Sampled only when asked (`mark()`, outside timed code: a sampling thread would add its own
    pauses to the latencies). `other_cores(a, b)` is the CPU that other processes used between
    two marks, in cores: 0.0 means the benchmark had the machine to itself.
    """

    def __init__(self) -> None:
        self._own: dict[int, float] = {}
        self._own_total = 0.0

    def mark(self) -> tuple[float, float, float]:
        times = psutil.cpu_times()
        busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
        me = psutil.Process()
        with contextlib.suppress(psutil.Error):
            for process in [me, *me.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    cpu = process.cpu_times()
                    now = cpu.user + cpu.system + cpu.children_user + cpu.children_system
                    self._own_total += max(0.0, now - self._own.get(process.pid, 0.0))
                    self._own[process.pid] = now
        return time.monotonic(), busy, self._own_total

    @staticmethod
    def other_cores(first: tuple[float, float, float], last: tuple[float, float, float]) -> float:
        if last[0] <= first[0]:
            return math.nan
        other = (last[1] - first[1]) - (last[2] - first[2])
        return max(0.0, other / (last[0] - first[0]))

    @staticmethod
    def busy_processes(threshold: float = 5.0) -> list[str]:
        """Other processes above `threshold` % of a core over a 1 s look, for the record."""
        me = psutil.Process()
        mine = {me.pid, *(p.pid for p in me.children(recursive=True))}
        procs = [p for p in psutil.process_iter(["pid", "name", "cmdline"]) if p.pid not in mine]
        for process in procs:
            with contextlib.suppress(psutil.Error):
                process.cpu_percent(None)
        time.sleep(1.0)
        busy = []
        for process in procs:
            with contextlib.suppress(psutil.Error):
                share = process.cpu_percent(None)
                if share >= threshold:
                    cmd = " ".join(process.info["cmdline"] or [process.info["name"] or "?"])
                    busy.append(f"{share:.0f}% {cmd[:100]}")
        return busy


class GcWatch:
    """Pauses of Python's cyclic garbage collector while active (a cause of latency spikes)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # (generation, seconds)
        self._started = 0.0
        self.active = False
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if not self.active:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._started))

    def reset(self) -> None:
        self.pauses.clear()

    def summary(self) -> str:
        """'N gen-2 collections, longest X ms; longest gen-0/1 Y ms' since the last reset."""
        full = [s for g, s in self.pauses if g == 2]
        young = [s for g, s in self.pauses if g < 2]
        text = f"{len(full)} gen-2, longest {max(full) * 1000:.1f} ms" if full else "0 gen-2"
        if young:
            text += f"; {len(young)} gen-0/1, longest {max(young) * 1000:.1f} ms"
        return text

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)


# The report: printed as it is built, written to bench/results/<name>.md at the end.


class Report:
    def __init__(self, name: str, title: str) -> None:
        self.name = name
        self.title = title
        self.started = datetime.now(UTC)
        self.command = command_line()
        self.blocks: list[str] = []
        self.postgres_version: str | None = None
        print(f"# {title}\n\ncommand: {self.command}\n", flush=True)

    def text(self, text: str) -> None:
        self.blocks.append(text)
        print(text + "\n", flush=True)

    def heading(self, text: str, level: int = 2) -> None:
        self.text(f"{'#' * level} {text}")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.text(markdown_table(headers, rows))

    def code(self, text: str, language: str = "") -> None:
        self.text(f"```{language}\n{text.rstrip()}\n```")

    def elapsed(self) -> float:
        return (datetime.now(UTC) - self.started).total_seconds()

    def render(self) -> str:
        head = [
            f"# {self.title}",
            "",
            f"- date: {self.started.strftime('%Y-%m-%d %H:%M:%S UTC')}",
            f"- command (from the repository root): `{self.command}`",
            f"- wall time of the whole run: {self.elapsed():.0f} s",
            "",
            "## Machine",
            "",
            markdown_table(("what", "value"), machine(self.postgres_version)),
            "",
        ]
        return "\n".join(head) + "\n" + "\n\n".join(self.blocks) + "\n"

    def write(self, path: Path | None = None) -> Path:
        path = path or RESULTS_DIR / f"{self.name}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render())
        print(f"results written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        return path


# Small pieces the benchmarks share.


class KnownTickers:
    """A stand-in for the ticker catalogue: never consulted for always-known tickers."""

    async def contains(self, ticker: str) -> bool:
        return ticker in TICKERS


def exit_on_sigterm() -> None:
    """SIGTERM ends the run like Ctrl-C: `finally` blocks stop the server and delete temp files.

    Installed before any server starts, so the test servers' own SIGTERM hook (kill and die at
    once, skipping clean-up) is not put in place.
    """

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


@contextlib.contextmanager
def temporary_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(base_dir: Path) -> Iterator[Any]:
    """A throwaway PostgreSQL of the test suite (fsync off), stopped and deleted on the way out."""
    sys.path.insert(0, str(ROOT))  # `__tests__` is importable when run from the repository root
    from __tests__.servers import PostgresServer

    server = PostgresServer(base_dir)
    try:
        server.start()
        yield server
    finally:
        server.close()


def postgres_settings(server: Any, database: str = "postgres") -> str:
    """The settings of the benchmark server that matter to the figures, one line."""
    names = ("shared_buffers", "fsync", "synchronous_commit", "full_page_writes", "work_mem")
    values = server.psql(
        "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name) "
        f"FROM pg_settings WHERE name IN ({', '.join(repr(n) for n in names)})",
        database=database,
    )
    return str(values)


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t:` ... then `t[0]` holds the elapsed seconds."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start
