"""The shared core of the benchmarks that start processes (bench_sse, bench_storm,
bench_redis_fanout, soak, bench_hostile, bench_dashboard): ports, child processes and their
stopping, the environment and settings they start the product with, the Deribit simulator, a
scratch directory for logs, py-spy, file limits, the machine. Each benchmark file keeps only what
it measures. Everything here is stdlib + psutil.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from bench.common import cpu_model

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else sys.executable


def raise_nofile() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit; returns (soft, hard) after the change."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: Child | None = None) -> None:
    """Until something accepts TCP connections on host:port (or the child died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


@dataclass
class Child:
    """A process we started, in its own session so that it and its children stop together."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the child's process group, SIGKILL after `timeout` seconds."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(5)
        else:
            # The leader is gone; make sure nothing it started lingers in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


def spawn(
    name: str,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | str | None = None,
    log_path: Path | None = None,
    pipes: bool = False,
) -> Child:
    """Start a child in a new session; stdout+stderr to `log_path` unless `pipes` (stdin/stdout)."""
    log = open(log_path, "wb") if log_path is not None else None  # noqa: SIM115
    popen = subprocess.Popen(  # noqa: S603
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipes else (log or subprocess.DEVNULL),
        stderr=log or subprocess.DEVNULL,
        start_new_session=True,
    )
    return Child(name, popen, log_path, log)


def broadcaster_args(description: str) -> argparse.Namespace:
    """The command line of the baselines bench_sse measures the product against (sse_baseline,
    sse_raw), with the file limit raised and warnings-only logging: both are set up alike."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deribit-url", required=True)
    parser.add_argument("--ticker", default="btc_usd")
    parser.add_argument("--heartbeat", type=float, default=10.0)
    args = parser.parse_args()
    raise_nofile()
    logging.basicConfig(level=logging.WARNING)
    return args


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def rss_bytes(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


def machine_description() -> str:
    """One line: CPU, cores, memory, kernel, Python and the libraries that matter here."""
    from importlib import metadata  # noqa: PLC0415

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    memory_gb = psutil.virtual_memory().total / 2**30
    libs = ", ".join(
        f"{name} {version(name)}"
        for name in ("uvicorn", "uvloop", "httptools", "starlette", "fastapi", "sse-starlette")
    )
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (
        f"{cpu_model()}, {psutil.cpu_count(logical=True)} logical CPUs, {memory_gb:.1f} GiB RAM, "
        f"Linux {platform.release()}, Python {platform.python_version()}; {libs}; "
        f"RLIMIT_NOFILE {soft}/{hard}"
    )


def run_fast(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a client process's loop on uvloop when it is installed: the clients' own overhead,
    as small as can be."""
    try:
        import uvloop  # noqa: PLC0415

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# -- the processes a benchmark starts: every one is stopped by stop_everything -----------------

HOST = "127.0.0.1"
_children: list[Child] = []


def start(
    name: str, argv: list[str], *, env: dict[str, str], cwd: Path, logs: Path, pipes: bool = False
) -> Child:
    """`spawn`, logging to logs/NAME.log, kept for stop_everything."""
    child = spawn(name, argv, env=env, cwd=cwd, log_path=logs / f"{name}.log", pipes=pipes)
    _children.append(child)
    return child


def stop(child: Child) -> None:
    child.stop()
    with contextlib.suppress(ValueError):
        _children.remove(child)


def stop_everything() -> None:
    for child in reversed(list(_children)):
        with contextlib.suppress(Exception):
            child.stop(timeout=10)
    _children.clear()


def running() -> list[Child]:
    """The processes started and not stopped yet, oldest first."""
    return list(_children)


def cryptomarket_command() -> str:
    path = VENV_BIN / "cryptomarket"
    return str(path) if path.exists() else shutil.which("cryptomarket") or "cryptomarket"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without CryptoMarket settings a developer may have exported."""
    from cryptomarket.core.config import Settings  # noqa: PLC0415  # only the field names

    ours = set(Settings.model_fields)
    env = {key: value for key, value in os.environ.items() if key not in ours}
    return env | extra


def streams_env(per_user: int, heartbeat: int) -> dict[str, str]:
    """The product's settings for a benchmark's streams: every stream of a run opens at once,
    all of them signed in with the one simulator key, with no bound of opens in the way."""
    env = {
        "DERIBIT_HEARTBEAT_INTERVAL": str(heartbeat),
        "SSE_MAX_STREAMS": "20000",
        "SSE_MAX_STREAMS_PER_USER": str(per_user),
        "SSE_OPEN_BURST": "100000",
        "SSE_OPENS_PER_MINUTE": "1000000",
        "SSE_MAX_STREAMS_PER_ACCOUNT": "20000",  # the one key's account holds every stream
        "MAX_USER_IDS_PER_ACCOUNT": "1000",
        "LOG_LEVEL": "WARNING",
    }
    if heartbeat < 10:
        env["PROJECT_MODE"] = "testing"  # the product refuses a heartbeat below Deribit's 10 s
    return env


def start_simulator(cwd: Path, logs: Path, *options: str, tick_interval: float = 1.0) -> str:
    """The Deribit simulator (`cryptomarket simulate`, heartbeats down to 1 s) on a free port;
    its WebSocket URL."""
    port = free_port()
    argv = [cryptomarket_command(), "simulate", "--host", HOST, "--port", str(port)]
    argv += ["--tick-interval", f"{tick_interval:g}", "--min-heartbeat", "1", *options]
    child = start("simulator", argv, env=clean_env(), cwd=cwd, logs=logs)
    wait_port(HOST, port, 30, child)
    return f"ws://{HOST}:{port}/ws/api/v2"


@contextlib.contextmanager
def scratch(prefix: str, keep: Callable[[], bool]) -> Iterator[tuple[Path, Path]]:
    """A scratch directory and its `logs` folder for one run; on the way out every process
    started is stopped, and the directory goes unless `keep()` says to keep the logs. SIGTERM
    ends the run the same way."""

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # so that the `finally` below runs

    signal.signal(signal.SIGTERM, on_term)
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    logs = tmp / "logs"
    logs.mkdir()
    try:
        yield tmp, logs
    finally:
        stop_everything()
        if keep():
            print(f"logs kept in {logs}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def start_profiler(py_spy: str, pid: int, seconds: float, out: Path) -> Child:
    """py-spy recording `pid` for `seconds` into `out` (collapsed stacks), sampling at 500 Hz
    (a server idling at a few % of a core gives enough samples in a 20 s window), without
    pausing it."""
    argv = [py_spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "500"]
    argv += ["--duration", str(int(seconds)), "--format", "raw", "--output", str(out)]
    return start(out.stem, argv, env=clean_env(), cwd=out.parent, logs=out.parent)
