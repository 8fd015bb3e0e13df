"""The deployment under test, every part a real process on loopback, and what faults can do to it.

Distributed: PostgreSQL, Redis (with exactly docker-compose.yml's memory settings), the simulator,
two `cryptomarket serve` replicas, two `cryptomarket ingest`, a Celery worker and beat. Embedded:
the simulator and one `cryptomarket serve` on SQLite. The processes and servers are the test
suite's own (`__tests__/distributed/processes.py`, `__tests__/servers.py`).
"""

# ruff: noqa: S608  (SQL built from table-name constants)

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil
import yaml
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from __tests__.distributed.processes import Process, Processes
from __tests__.servers import PostgresServer, RedisServer, free_port
from bench.chaos.plan import STORE_INTERVAL_MS, Plan, write_accounts
from bench.common import ROOT
from cryptomarket.core.db import urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.instruments.names import is_instrument

LEADING = "leading: this process now holds the upstream connection"
LOST = "lost the lease"
WAITING = "another ingest process leads"
HEALTH_TIMEOUT = 60.0


def compose_redis_settings(compose: Path = ROOT / "docker-compose.yml") -> dict[str, str]:
    """`--maxmemory` and `--maxmemory-policy` exactly as the compose file runs Redis."""
    command = yaml.safe_load(compose.read_text())["services"]["redis"]["command"]
    settings = {}
    for flag in ("--maxmemory", "--maxmemory-policy"):
        settings[flag] = str(command[command.index(flag) + 1])
    return settings


def memory_bytes(value: str) -> int:
    """Redis's memory notation: 32mb, 1gb, 100kb or plain bytes."""
    units = {"kb": 1024, "mb": 1024**2, "gb": 1024**3, "k": 1000, "m": 1000**2, "g": 1000**3}
    lowered = value.lower()
    for unit, factor in units.items():
        if lowered.endswith(unit) and lowered[: -len(unit)].isdigit():
            return int(lowered[: -len(unit)]) * factor
    return int(lowered)


class Usage(NamedTuple):
    """A serve process's footprint. Served sockets (clients' connections) are what a leaked
    stream holds: none may remain once every client left. Outgoing ones (database, Redis and
    Deribit pools) and other descriptors are bounded by the pools, and reported beside."""

    rss: int
    served: int
    outgoing: int
    other_fds: int


class ComposeRedis(RedisServer):
    """The suite's Redis with the compose file's maxmemory and eviction policy on top."""

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.settings = compose_redis_settings()
        self.maxmemory = memory_bytes(self.settings["--maxmemory"])

    def _command(self) -> list[str]:
        return [*super()._command(), *(arg for pair in self.settings.items() for arg in pair)]


class Topology:
    """The parts both modes share: the simulator, the serve processes, the database."""

    faults: frozenset[str] = frozenset()

    def __init__(self, plan: Plan, directory: Path) -> None:
        self.plan = plan
        self.directory = directory
        self.processes = Processes(directory, {})
        self.sim_port = free_port()
        self.sim_url = f"ws://127.0.0.1:{self.sim_port}/ws/api/v2"
        self.serve_ports: list[int] = []
        self.serves: list[Process] = []
        # Per replica URL: set while it serves. A restarted replica's baseline is read before
        # clients come back to it (they wait on this), so "back to baseline" compares like to like.
        self.ready: dict[str, asyncio.Event] = {}
        self.baselines: list[Usage | None] = []
        self._restarts = 0
        self.database_url = ""

    # Lifecycle.

    async def start(self) -> None:
        write_accounts(self.plan, self.directory)
        sim = self.processes.start(
            "simulator",
            *("-m", "cryptomarket", "simulate", "--port", str(self.sim_port)),
            *("--tick-interval", str(self.plan.tick_interval), "--seed", str(self.plan.seed)),
            *("--min-heartbeat", "1", "--accounts", str(self.plan.accounts_file)),
            *("--instrument-interval", str(self.plan.tick_interval)),
        )
        await sim.logged("Deribit simulator listening")

    def env(self) -> dict[str, str]:
        return {
            "DEBUG": "False",
            "PROJECT_MODE": "testing",
            "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "DATABASE_URL": self.database_url,
            "DERIBIT_WS_URL": self.sim_url,
            "DERIBIT_HEARTBEAT_INTERVAL": "1",
            "DERIBIT_POOL_SIZE": "2",
            "TRACKED_TICKERS": ",".join(self.plan.tracked),
            "SSE_MAX_STREAMS_PER_USER": "20",
            "SSE_MAX_STREAMS_PER_ACCOUNT": "40",  # each user has its own account
            "SSE_OPEN_BURST": "10000",  # churn reopens streams on purpose
            "JOBS_PERSIST_INTERVAL": "0.5",
            "JOBS_GAP_INTERVAL": "5",
            "INSTRUMENT_STORE_INTERVAL_MS": str(STORE_INTERVAL_MS),
        }

    def stop(self) -> None:
        self.processes.stop_all()

    @property
    def replicas(self) -> list[str]:
        return [f"http://127.0.0.1:{port}" for port in self.serve_ports]

    def start_serve(self, index: int) -> Process:
        self._restarts += 1
        letter = "abcdefgh"[index]
        port = self.serve_ports[index]
        process = self.processes.start(
            f"serve-{letter}-{self._restarts}", "-m", "cryptomarket", "serve", "--port", str(port)
        )
        if index < len(self.serves):
            self.serves[index] = process
        else:
            self.serves.append(process)
        return process

    async def healthy(self, index: int) -> None:
        async with httpx.AsyncClient(base_url=self.replicas[index], timeout=5) as client:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HEALTH_TIMEOUT
            while loop.time() < deadline:
                if not self.serves[index].running:
                    raise AssertionError(
                        f"serve {index} exited:\n{self.serves[index].log()[-3000:]}"
                    )
                try:
                    if (await client.get("/health")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)  # nothing to await: the process has no readiness event
        raise AssertionError(f"serve {index} not healthy within {HEALTH_TIMEOUT}s")

    def serve_usage(self) -> list[Usage | None]:
        """RSS and descriptors of each serve process, None when it is not running."""
        usage: list[Usage | None] = []
        for process in self.serves:
            port = self.serve_ports[len(usage)]
            try:
                ps = psutil.Process(process.popen.pid)
                rss, fds = ps.memory_info().rss, ps.num_fds()
                tcp = [c for c in ps.net_connections("tcp") if c.status != psutil.CONN_LISTEN]
            except psutil.Error:
                usage.append(None)
                continue
            served = sum(1 for c in tcp if c.laddr and c.laddr.port == port)
            outgoing = len(tcp) - served
            usage.append(Usage(rss, served, outgoing, max(0, fds - len(tcp))))
        return usage

    def sockets(self, index: int) -> str:
        """A serve process's TCP sockets by local port and state: what a leak is made of."""
        try:
            connections = psutil.Process(self.serves[index].popen.pid).net_connections("tcp")
        except psutil.Error:
            return "not running"
        port = self.serve_ports[index]
        peers = {self.sim_port: "deribit", **self._peers()}
        kinds: dict[str, int] = {}
        for c in connections:
            if c.laddr and c.laddr.port == port:
                key = f"served {c.status}"
            else:
                key = f"to {peers.get(c.raddr.port, '?') if c.raddr else '?'} {c.status}"
            kinds[key] = kinds.get(key, 0) + 1
        return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"

    def _peers(self) -> dict[int, str]:
        return {}

    def logs(self) -> dict[str, str]:
        return {p.name: p.log() for p in self.processes.started}

    # Faults on processes (what each mode supports is in `faults`).

    async def kill_serve(self, index: int, down_seconds: float) -> None:
        gate = self.ready[self.replicas[index]]
        gate.clear()
        self.serves[index].kill()
        await asyncio.sleep(down_seconds)  # the outage itself is the fault
        self.start_serve(index)
        await self.healthy(index)
        self.baselines[index] = self.serve_usage()[index]
        gate.set()

    def open_gates(self) -> None:
        """Every replica serves; the baselines are read now, before any stream opens."""
        self.baselines = self.serve_usage()
        for url in self.replicas:
            self.ready.setdefault(url, asyncio.Event()).set()

    # The database, read at the end.

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        engine = create_engine(urls_for(self.database_url).sync_url)
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(text(sql), params or {})]
        finally:
            engine.dispose()

    def table(self, name: str) -> str:
        return f"crypto.{name}" if self.plan.mode == "distributed" else f"crypto_{name}"

    def ticks_table(self, ticker: str) -> str:
        return self.table("instrument_ticks" if is_instrument(ticker) else "price_tickers")

    def rows(self, ticker: str, since: int, until: int) -> list[tuple[int, float]]:
        return [
            (int(ts), float(price))
            for ts, price in self._query(
                f"SELECT timestamp, price FROM {self.ticks_table(ticker)} "
                "WHERE ticker = :t AND timestamp > :a AND timestamp <= :b ORDER BY timestamp",
                {"t": ticker, "a": since, "b": until},
            )
        ]

    def newest(self, ticker: str) -> int | None:
        found = self._query(
            f"SELECT max(timestamp) FROM {self.ticks_table(ticker)} WHERE ticker = :t",
            {"t": ticker},
        )
        return None if found[0][0] is None else int(found[0][0])

    def gaps(self) -> list[tuple[str, int, int, str]]:
        return [
            (str(t), int(a), int(b), str(r))
            for t, a, b, r in self._query(
                f"SELECT ticker, from_ts, to_ts, reason FROM {self.table('price_gaps')}"
            )
        ]

    def gap_log(self) -> list[tuple[str, int, int, str]]:
        """Every gap ever written (a trigger's copy): a gap later replaced still shows here."""
        return [
            (str(t), int(a), int(b), str(r))
            for t, a, b, r in self._query(
                "SELECT ticker, from_ts, to_ts, reason FROM chaos_gap_log"
            )
        ]

    def stored_subscriptions(self) -> set[str]:
        return {str(t) for (t,) in self._query(f"SELECT ticker FROM {self.table('person_prices')}")}


class Embedded(Topology):
    faults = frozenset({"drop", "silence", "refusal", "latency", "e10028", "e11051"}) | frozenset(
        {"kill_serve", "churn", "storm"}
    )

    async def start(self) -> None:
        await super().start()
        path = self.directory / "cryptomarket.sqlite3"
        self.database_url = f"sqlite:///{path}"
        upgrade(urls_for(self.database_url).sync_url)
        with sqlite3.connect(path) as db:
            db.executescript(
                "CREATE TABLE chaos_gap_log (ticker TEXT, from_ts INTEGER, to_ts INTEGER, "
                "reason TEXT);"
                "CREATE TRIGGER chaos_gap_insert AFTER INSERT ON crypto_price_gaps BEGIN "
                "INSERT INTO chaos_gap_log VALUES (NEW.ticker, NEW.from_ts, NEW.to_ts, NEW.reason);"
                " END;"
                "CREATE TRIGGER chaos_gap_update AFTER UPDATE ON crypto_price_gaps BEGIN "
                "INSERT INTO chaos_gap_log VALUES (NEW.ticker, NEW.from_ts, NEW.to_ts, NEW.reason);"
                " END;"
            )
        self.processes.env.update(self.env())
        self.serve_ports = [free_port()]
        self.start_serve(0)
        await self.healthy(0)


GAP_LOG_SQL = """
CREATE TABLE public.chaos_gap_log (ticker text, from_ts bigint, to_ts bigint, reason text);
CREATE FUNCTION public.chaos_log_gap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.chaos_gap_log VALUES (NEW.ticker, NEW.from_ts, NEW.to_ts, NEW.reason);
  RETURN NEW;
END $$;
CREATE TRIGGER chaos_gap_log AFTER INSERT OR UPDATE ON crypto.price_gaps
  FOR EACH ROW EXECUTE FUNCTION public.chaos_log_gap();
"""


class Distributed(Topology):
    faults = Embedded.faults | frozenset(
        {"kill_ingest", "kill_worker", "redis_restart", "postgres_restart"}
    )

    def __init__(self, plan: Plan, directory: Path) -> None:
        super().__init__(plan, directory)
        self.postgres = PostgresServer(directory / "postgres")
        self.redis = ComposeRedis(directory / "redis")
        self.ingests: list[Process] = []
        self.worker: Process | None = None

    async def start(self) -> None:
        await super().start()
        await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(self.redis.start)
        name = f"chaos_{uuid.uuid4().hex[:8]}"
        self.postgres.create_database(name)
        self.database_url = self.postgres.url(database=name)
        upgrade(urls_for(self.database_url).sync_url)
        self.postgres.psql(GAP_LOG_SQL, database=name)
        self.processes.env.update({**self.env(), "REDIS_URL": self.redis.url})
        self.serve_ports = [free_port(), free_port()]
        for index in range(2):
            self.start_serve(index)
        first = self.start_ingest(0)
        await first.logged(LEADING, timeout=HEALTH_TIMEOUT)
        await self.start_ingest(1).logged(WAITING, timeout=HEALTH_TIMEOUT)
        self.start_worker()
        celery = ("-m", "celery", "-A", "cryptomarket.worker")
        schedule = str(self.directory / "beat-schedule")
        self.processes.start("beat", *celery, "beat", "--loglevel=INFO", "--schedule", schedule)
        for index in range(2):
            await self.healthy(index)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.redis.close()
            self.postgres.close()

    def start_ingest(self, index: int) -> Process:
        self._restarts += 1
        process = self.processes.start(
            f"ingest-{index + 1}-{self._restarts}", "-m", "cryptomarket", "ingest"
        )
        if index < len(self.ingests):
            self.ingests[index] = process
        else:
            self.ingests.append(process)
        return process

    def start_worker(self) -> None:
        self._restarts += 1
        self.worker = self.processes.start(
            f"worker-{self._restarts}",
            *("-m", "celery", "-A", "cryptomarket.worker", "worker", "--pool=solo"),
            "--loglevel=INFO",
        )

    def leader(self) -> int | None:
        """The ingest whose latest lease line says it leads (a log is the only signal it gives)."""
        for index, process in enumerate(self.ingests):
            log = process.log()
            if process.running and log.rfind(LEADING) > log.rfind(LOST):
                return index
        return None

    async def kill_ingest(self, down_seconds: float) -> str:
        index = self.leader()
        victim = 0 if index is None else index
        self.ingests[victim].kill()
        await asyncio.sleep(down_seconds)  # the outage itself is the fault
        self.start_ingest(victim)
        return f"ingest-{victim + 1}{' (leader)' if index is not None else ''}"

    async def kill_worker(self, down_seconds: float) -> None:
        if self.worker is not None:
            self.worker.kill()
        await asyncio.sleep(down_seconds)
        self.start_worker()

    def _peers(self) -> dict[int, str]:
        return {self.redis.port: "redis", self.postgres.port: "postgres"}

    async def restart_redis(self) -> None:
        await asyncio.to_thread(self.redis.restart)

    async def restart_postgres(self) -> None:
        await asyncio.to_thread(self.postgres.restart)

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if "chaos_gap_log" in sql:
            sql = sql.replace("chaos_gap_log", "public.chaos_gap_log")
        return super()._query(sql, params)
