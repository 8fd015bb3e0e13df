"""The project's own commands as child processes of a test, each with its log file.

Every process leads its own process group, so `kill()` takes its children (a Celery worker's
pool) with it, like a crash of its container. What is still running at the end is killed.
"""

# Every subprocess runs this interpreter with arguments built here, never a shell.
# ruff: noqa: S603

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from __tests__.app_server import LIMITS_OUT_OF_THE_WAY

START_TIMEOUT = 30.0


class Process:
    def __init__(self, name: str, args: list[str], env: dict[str, str], directory: Path) -> None:
        self.name = name
        self.log_path = directory / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.popen = subprocess.Popen(
                [sys.executable, *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=directory,  # no .env of the developer's is read
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    async def logged(self, text: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until the process has written `text` to its log (it has no other signal)."""
        try:
            async with asyncio.timeout(timeout):
                while text not in self.log():  # a log file has no event
                    if not self.running:
                        raise AssertionError(f"{self.name} exited:\n{self.log()[-3000:]}")
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not log {text!r} within {timeout}s:\n{self.log()[-3000:]}"
            ) from None

    def kill(self) -> None:
        """SIGKILL the process and its children at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if not self.running:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class Processes:
    """Starts processes with one environment and stops them all at the end."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        limits = {name: str(value) for name, value in LIMITS_OUT_OF_THE_WAY.items()}
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory), **limits, **env}
        self.started: list[Process] = []

    def start(self, name: str, *args: str, **extra_env: str) -> Process:
        process = Process(name, list(args), {**self.env, **extra_env}, self.directory)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()
