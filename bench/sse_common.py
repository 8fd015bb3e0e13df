"""Small helpers of the SSE benchmark: ports, child processes, file limits, the machine.

Kept apart from `bench/common.py` (another benchmark's helpers) so the two can change
independently; everything here is stdlib + psutil.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

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


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def rss_bytes(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


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
        f"{_cpu_model()}, {psutil.cpu_count(logical=True)} logical CPUs, {memory_gb:.1f} GiB RAM, "
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
