"""The distributed deployment a benchmark starts: PostgreSQL, Redis, `ingest` and `serve` replicas.

The test suite's servers (`__tests__/servers.py`: real PostgreSQL and Redis on loopback, fsync and
persistence off), `cryptomarket migrate`, one `cryptomarket ingest` that holds the upstream
connection, and replicas with REDIS_URL set; whatever each logged that a report should mention.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from cryptography.fernet import Fernet

from bench.machine_load import Meter
from bench.sse_common import (
    HOST,
    ROOT,
    Child,
    clean_env,
    cryptomarket_command,
    free_port,
    start,
    streams_env,
    wait_port,
)
from bench.sse_servers import TICKER, Bench, Server, signed_in

LEADING = "leading: this process now holds the upstream connection"
DATABASE = "cryptomarket"


@dataclass
class Backends:
    postgres: Any  # __tests__.servers.PostgresServer
    redis: Any  # __tests__.servers.RedisServer
    simulator: psutil.Process

    def meters(self) -> list[Meter]:
        pid_file = self.postgres.data_dir / "postmaster.pid"
        postmaster = int(pid_file.read_text().split()[0])
        return [
            Meter("redis", psutil.Process(self.redis_pid())),
            Meter("postgres", psutil.Process(postmaster), tree=True),
            Meter("simulator", self.simulator),
        ]

    def redis_pid(self) -> int:
        for line in self.redis.cli("info", "server").splitlines():
            if line.startswith("process_id:"):
                return int(line.split(":", 1)[1])
        raise RuntimeError("redis-server did not say its process id")

    def redis_info(self, field_name: str, section: str = "memory") -> str:
        text: str = self.redis.cli("info", section)
        for line in text.splitlines():
            if line.startswith(f"{field_name}:"):
                return line.split(":", 1)[1].strip()
        return "?"


@contextlib.contextmanager
def backends(base: Path, simulator: Child) -> Iterator[Backends]:
    """PostgreSQL (fsync off) and Redis (no persistence) of the test suite, always stopped."""
    sys.path.insert(0, str(ROOT))  # `__tests__` is importable from the repository root
    from __tests__.servers import PostgresServer, RedisServer  # noqa: PLC0415

    postgres, redis = PostgresServer(base / "postgres"), RedisServer(base / "redis")
    try:
        postgres.start()
        redis.start()
        postgres.create_database(DATABASE)
        yield Backends(postgres, redis, psutil.Process(simulator.pid))
    finally:
        for server in (redis, postgres):
            with contextlib.suppress(Exception):
                server.close()


def distributed_env(bench: Bench, found: Backends) -> dict[str, str]:
    env = clean_env(
        DEBUG="False",
        ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        DATABASE_URL=found.postgres.url(database=DATABASE),
        REDIS_URL=found.redis.url,
        DERIBIT_WS_URL=bench.sim_url,
        TRACKED_TICKERS=TICKER,
        **streams_env(bench.per_user, bench.args.heartbeat),
    )
    return env


def migrate(env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(  # noqa: S603
        [cryptomarket_command(), "migrate"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cryptomarket migrate failed: {done.stdout}{done.stderr}")


def start_replica(bench: Bench, env: dict[str, str], name: str) -> Server:
    port = free_port()
    argv = [cryptomarket_command(), "serve", "--host", HOST, "--port", str(port)]
    child = start(name.replace(" ", "-"), argv, env=env, cwd=bench.tmp, logs=bench.logs)
    wait_port(HOST, port, 60, child)
    return Server(name, child, port, [])


def start_ingest(bench: Bench, env: dict[str, str]) -> Child:
    child = start("ingest", [cryptomarket_command(), "ingest"], env=env | {"LOG_LEVEL": "INFO"},
                  cwd=bench.tmp, logs=bench.logs)  # fmt: skip
    deadline = time.monotonic() + 30
    while LEADING not in log_text(child):
        if child.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ingest never led: {child.tail()}")
        time.sleep(0.1)
    return child


def log_text(child: Child) -> str:
    if child.log_path is None or not child.log_path.exists():
        return ""
    return child.log_path.read_text(errors="replace")


def wait_healthy(port: int, timeout: float = 60) -> None:
    """Until the replica's /health says Redis is fine and ingest reports the upstream up."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=10) as client:
        while True:
            health = client.get("/health").json()
            if health["cache"] == "ok" and health["upstream"].startswith("connected"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica on {port} never became healthy: {health}")
            time.sleep(0.2)


def sign_in_users(bench: Bench, port: int, n: int) -> list[str]:
    """Session tokens of enough `bench-<k>` users for n streams, each subscribed at timer=0."""
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        users = [f"bench-{k}" for k in range(math.ceil(n / bench.per_user))]
        return [signed_in(bench, client, user) for user in users]


def problems(child: Child, limit: int = 5) -> list[str]:
    """The warnings, errors and tracebacks a process logged (the first `limit`, and a count)."""
    lines = [
        line.strip()
        for line in log_text(child).splitlines()
        if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback"))
    ]
    if not lines:
        return []
    shown = [f"{child.name} logged: {line[:200]}" for line in lines[:limit]]
    more = len(lines) - limit
    return shown + ([f"{child.name}: {more} more such lines"] if more > 0 else [])
