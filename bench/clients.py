"""The SSE benchmarks' client processes: spoken to over stdin/stdout, one answer per line.

Two load generators measure alike and report alike (bench/sse_loadgen.py documents both):
- `c` (the default), bench/sse_cclient.c: one epoll loop in C, built here with the machine's C
  compiler on first use. It spends about a fifth of the Python client's CPU per event, and the
  clients share the servers' two cores, so less of what the servers need goes to them.
- `python`, bench/sse_loadgen.py: asyncio protocols on uvloop. Kept to cross-check the C client
  (the same run through both must count the same events) and for a machine without a compiler.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import psutil

from bench.sse_common import HOST, PYTHON, ROOT, Child, clean_env, cpu_seconds, start, stop

C_SOURCE = ROOT / "bench" / "sse_cclient.c"
BUILD = ROOT / "bench" / ".build"  # gitignored
CLIENT_KINDS = ("c", "python")


class ClientProcesses:
    """`count` client processes running `argv`, spoken to over their stdin/stdout (one command
    per line each way; the answers are JSON)."""

    def __init__(self, count: int, logs: Path, tag: str, argv: list[str], name: str) -> None:
        self.children: list[Child] = []
        for index in range(count):
            child = start(
                f"{name}-{tag}-{index}",
                argv,
                env=clean_env(PYTHONPATH=str(ROOT)),
                cwd=ROOT,
                logs=logs,
                pipes=True,
            )
            self.children.append(child)
        self.processes = [psutil.Process(child.pid) for child in self.children]

    def encode(self, command: dict[str, Any]) -> str:
        return json.dumps(command)

    def ask(self, commands: list[dict[str, Any]], timeout: float) -> list[Any]:
        """Each command to its process, in order; their answers."""
        for child, command in zip(self.children, commands, strict=True):
            assert child.popen.stdin is not None  # noqa: S101  # started with pipes
            child.popen.stdin.write((self.encode(command) + "\n").encode())
            child.popen.stdin.flush()
        return [self._read(child, timeout) for child in self.children]

    def ask_each(self, command: dict[str, Any], timeout: float) -> list[Any]:
        return self.ask([command] * len(self.children), timeout)

    def shares(self, n: int) -> list[int]:
        """`n` split across the processes."""
        count = len(self.children)
        return [n // count + (1 if i < n % count else 0) for i in range(count)]

    def cpu(self) -> float:
        return sum(cpu_seconds(process) for process in self.processes)

    @staticmethod
    def _read(child: Child, timeout: float) -> Any:
        stdout = child.popen.stdout
        assert stdout is not None  # noqa: S101  # started with pipes
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or not box[0]:
            raise RuntimeError(f"{child.name} did not answer: {child.tail()}")
        answer = json.loads(box[0])
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"{child.name}: {answer['error']}")
        return answer


def c_client() -> Path:
    """bench/sse_cclient.c built, once per version of its source."""
    digest = hashlib.sha256(C_SOURCE.read_bytes()).hexdigest()[:12]
    binary = BUILD / f"sse_cclient-{digest}"
    if not binary.exists():
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise RuntimeError("no C compiler for bench/sse_cclient.c: pass --clients python")
        BUILD.mkdir(exist_ok=True)
        partial = binary.with_suffix(".tmp")
        subprocess.run(  # noqa: S603
            [compiler, "-O2", "-Wall", "-o", str(partial), str(C_SOURCE)], check=True
        )
        partial.replace(binary)
    return binary


def client_processes(kind: str, streams: int) -> int:
    """Processes enough for `streams`: one C client reads 10,000 for about 5 % of a core; a
    Python one about as much as the server writes, so beyond 2,000 it gets two."""
    return 1 if kind == "c" or streams <= 2000 else 2


class LoadGens(ClientProcesses):
    """The SSE benchmarks' load generators, of `kind` c or python."""

    def __init__(self, count: int, logs: Path, tag: str, kind: str = "c") -> None:
        self.kind = kind
        self.logs = logs
        self.files = itertools.count()
        if kind == "c":
            super().__init__(count, logs, tag, [str(c_client())], "sse_cclient")
        else:
            super().__init__(count, logs, tag, [PYTHON, "-m", "bench.sse_loadgen"], "sse_loadgen")

    def encode(self, command: dict[str, Any]) -> str:
        if self.kind != "c":
            return super().encode(command)
        name = command["cmd"]
        if name == "open":
            # A file per command: the processes read theirs while the next is being written.
            requests = self.logs / f"requests-{id(self)}-{next(self.files)}.txt"
            requests.write_text("".join(command["requests"]))
            values = ("host", "port", "count", "concurrency", "timeout")
            return " ".join(["open", *(str(command[key]) for key in values), str(requests)])
        if name == "arm":
            return f"arm {command['w0']} {command['w1']}"
        return str(name)

    def open(self, n: int, port: int, requests: list[str], concurrency: int) -> dict[str, Any]:
        commands = [
            {
                "cmd": "open",
                "host": HOST,
                "port": port,
                "requests": requests,
                "count": share,
                "concurrency": concurrency,
                "timeout": 60,
            }
            for share in self.shares(n)
        ]
        answers = self.ask(commands, timeout=900)
        errors: dict[str, int] = {}
        for answer in answers:
            for reason, times in answer["errors"].items():
                errors[reason] = errors.get(reason, 0) + times
        return {
            "opened": sum(a["opened"] for a in answers),
            "failed": sum(a["failed"] for a in answers),
            "seconds": max(a["seconds"] for a in answers),
            "errors": errors,
        }

    def arm(self, w0: int, w1: int) -> None:
        self.ask_each({"cmd": "arm", "w0": w0, "w1": w1}, timeout=60)

    def report(self) -> list[dict[str, Any]]:
        return self.ask_each({"cmd": "report"}, timeout=120)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask_each({"cmd": "close"}, timeout=30)
        for child in self.children:
            stop(child)
