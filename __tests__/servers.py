"""Real PostgreSQL and Redis servers for the tests, on free ports of 127.0.0.1.

Plain classes, no pytest, so fixtures, benchmarks and scripts can share them. Each server is a
child of the test process: `stop()` shuts it down cleanly, `kill()` SIGKILLs it and all its
children to simulate a crash, and `start()` after either brings it back on the same port (and,
for PostgreSQL, with the same data). A start that fails raises `ServerError` with the tail of the
server's log. An atexit hook (and a SIGTERM hook, when SIGTERM has no other handler) kills
whatever is still running, so an aborted run leaves no server behind.
"""

# Every subprocess here runs a server binary with arguments built by this module, never a shell.
# ruff: noqa: S603

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import ClassVar, Literal
from urllib.parse import quote

HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # seconds for a server to accept connections
STOP_TIMEOUT = 30.0  # seconds for a clean shutdown before it is killed
POLL_INTERVAL = 0.05  # between readiness probes of a starting server
PROBE_TIMEOUT = 2.0  # for one probe: a squatter on the port may accept and never answer
LOG_TAIL_LINES = 40
PORT_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it

StopMode = Literal["smart", "fast", "immediate"]
_STOP_SIGNALS: dict[StopMode, signal.Signals] = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}


class ServerError(RuntimeError):
    """A server did not start, answer or stop; the message carries the tail of its log."""


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class _Server:
    """Process handling shared by both servers; subclasses say how to launch and probe."""

    name: ClassVar[str]

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = base_dir / f"{self.name}.log"
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._owner_pid = os.getpid()

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        """Chosen at the first start and kept for good, so clients find a restarted server."""
        if self._port is None:
            raise ServerError(f"{self.name} has not been started yet")
        return self._port

    @property
    def running(self) -> bool:
        """Whether the server process is alive (stopped, killed and crashed ones are not)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and return once it accepts connections; a no-op when running."""
        if self.running:
            return
        self._process = None
        _track(self)
        self._prepare()
        port_fixed = self._port is not None
        for attempt in range(1 if port_fixed else PORT_ATTEMPTS):
            if not port_fixed:
                self._port = free_port()
            offset = self._log_size()
            failure = self._launch()
            if failure is None:
                return
            lost_race = "Address already in use" in self._log_since(offset)
            if port_fixed or not lost_race or attempt == PORT_ATTEMPTS - 1:
                error = self._error(failure, offset)
                if not port_fixed:
                    self._port = None  # never served there: the next start may pick another
                raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def kill(self) -> None:
        """SIGKILL the server and all its children at once, like a crash of its host.

        Returns once they are all gone, so a restart does not find them still holding the port
        or (PostgreSQL) the shared memory of the old server.
        """
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGSTOP)  # no new child can appear while the tree is listed
        doomed = _descendants(process.pid)
        process.kill()
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 5.0
        while any(map(_alive, doomed)) and time.monotonic() < deadline:
            time.sleep(0.01)

    def restart(self) -> None:
        """Stop when running, then start on the same port."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Shut the server down cleanly and wait for it; a no-op when it is not running."""
        self._terminate(signal.SIGTERM)

    def close(self) -> None:
        """Stop for good and release what the server holds on disk (a later start begins anew)."""
        try:
            self.stop()
        finally:
            self._dispose()

    # What subclasses provide.

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Work before each start (such as creating a database cluster)."""

    def _run_as(self) -> pwd.struct_passwd | None:
        """The account to run the server under, when not the current one."""
        return None

    def _cwd(self) -> Path:
        return self.base_dir

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # The machinery.

    def _launch(self) -> str | None:
        """Spawn the server and wait until it is ready; None when it is, else why not."""
        command = self._command()
        account = self._run_as()
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {shlex.join(command)}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd(),
                env=self._env(),
                start_new_session=True,  # a Ctrl-C reaches pytest only, which stops it in order
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=os.getgrouplist(account.pw_name, account.pw_gid) if account else None,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = self._process.poll()
            if code is not None:
                self._process = None
                return f"exited with status {code} while starting"
            if self._ready():
                return None
            if time.monotonic() > deadline:
                self.kill()
                return f"did not accept connections within {START_TIMEOUT:.0f}s"
            time.sleep(POLL_INTERVAL)

    def _terminate(self, sig: signal.Signals) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            self._process = None
            return
        offset = self._log_size()
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            raise self._error(f"did not stop within {STOP_TIMEOUT:.0f}s; killed", offset) from None
        self._process = None

    def _dispose(self) -> None:
        _LIVE.discard(self)

    def _abandon(self) -> None:
        """The exit hooks' way out: no clean shutdown, just nothing left behind."""
        self.kill()
        self._dispose()

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _error(self, reason: str, offset: int) -> ServerError:
        tail = "\n".join(self._log_since(offset).splitlines()[-LOG_TAIL_LINES:])
        where = f"{HOST}:{self._port}" if self._port else HOST
        return ServerError(
            f"{self.name} on {where} {reason}\n"
            f"--- last lines of {self.log_path} ---\n{tail or '(empty)'}"
        )


class PostgresServer(_Server):
    """A throwaway PostgreSQL cluster: superuser `postgres`, trust auth on loopback, no fsync.

    The cluster lives in a private directory of the system temp dir (short enough for the Unix
    socket path, and reachable by the `postgres` account when the tests run as root, which
    PostgreSQL refuses to run as); the log is `base_dir/postgres.log`. `close()` deletes it.
    """

    name = "postgres"
    superuser = "postgres"

    def __init__(self, base_dir: Path) -> None:
        super().__init__(base_dir)
        self.bin_dir = _postgres_bin_dir()
        self._account = _postgres_account() if os.geteuid() == 0 else None
        self._runtime_dir: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self._runtime() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._runtime() / "socket"

    def url(self, driver: str = "postgresql", database: str = "postgres") -> str:
        """A SQLAlchemy (or libpq) URL: `url("asyncpg")` or `url("postgresql+asyncpg")`."""
        scheme = driver if driver.startswith("postgresql") else f"postgresql+{driver}"
        return f"{scheme}://{self.superuser}@{HOST}:{self.port}/{quote(database, safe='')}"

    def stop(self, mode: StopMode = "fast") -> None:
        """Shut down like `pg_ctl stop -m MODE` and wait: fast rolls back open transactions."""
        self._terminate(_STOP_SIGNALS[mode])

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL through psql as the superuser; its unaligned output, or ServerError."""
        command = [
            *(str(self.bin_dir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
            *("-h", HOST, "-p", str(self.port), "-U", self.superuser, "-d", database, "-c", sql),
        ]
        env = _without_pg_variables(os.environ)
        env.update(PGCLIENTENCODING="UTF8", PGCONNECT_TIMEOUT="10")
        result = subprocess.run(
            command, capture_output=True, encoding="utf-8", env=env, timeout=60, check=False
        )
        if result.returncode != 0:
            raise ServerError(f"psql failed on {database!r}: {sql}\n{result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self, name: str, template: str | None = None) -> None:
        """CREATE DATABASE; a template must have no open connection while it is copied."""
        sql = f"CREATE DATABASE {_identifier(name)}"
        if template is not None:
            sql += f" TEMPLATE {_identifier(template)}"
        self.psql(sql)

    def drop_database(self, name: str) -> None:
        """Drop it even while clients are connected (their sessions are terminated)."""
        self.psql(f"DROP DATABASE IF EXISTS {_identifier(name)} WITH (FORCE)")

    def _runtime(self) -> Path:
        if self._runtime_dir is None:
            raise ServerError("postgres has not been started yet")
        return self._runtime_dir

    def _prepare(self) -> None:
        if self._runtime_dir is None:
            self._runtime_dir = Path(tempfile.mkdtemp(prefix="cryptomarket-pg-"))
            self.socket_dir.mkdir()
            if self._account is not None:
                for path in (self._runtime_dir, self.socket_dir):
                    os.chown(path, self._account.pw_uid, self._account.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        command = [
            *(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.superuser),
            *("--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"),
        ]
        account = self._account
        offset = self._log_size()
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {shlex.join(command)}\n".encode())
            log.flush()
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._cwd(),
                env=self._env(),
                user=account.pw_uid if account else None,
                group=account.pw_gid if account else None,
                extra_groups=os.getgrouplist(account.pw_name, account.pw_gid) if account else None,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise self._error(f"initdb exited with status {result.returncode}", offset)

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": HOST,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        return [
            *(str(self.bin_dir / "postgres"), "-D", str(self.data_dir)),
            *("-p", str(self.port), "-k", str(self.socket_dir)),
            *(arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")),
        ]

    def _ready(self) -> bool:
        """pg_isready says it accepts connections, and psql finds our cluster behind the port."""
        probe = [str(self.bin_dir / "pg_isready"), "-q", "-t", "1"]
        probe += ["-h", HOST, "-p", str(self.port)]
        env = _without_pg_variables(os.environ)
        try:
            if subprocess.run(probe, env=env, timeout=PROBE_TIMEOUT, check=False).returncode != 0:
                return False
            served = self.psql("show data_directory")
        except (subprocess.TimeoutExpired, ServerError):
            return False
        return Path(served).resolve() == self.data_dir.resolve()  # not another server's

    def _run_as(self) -> pwd.struct_passwd | None:
        return self._account

    def _cwd(self) -> Path:
        return self._runtime()  # the postgres account may not be able to enter base_dir

    def _env(self) -> dict[str, str]:
        env = _without_pg_variables(os.environ)
        if self._account is not None:
            name = self._account.pw_name
            env.update(HOME=self._account.pw_dir, USER=name, LOGNAME=name)
        return env

    def _dispose(self) -> None:
        super()._dispose()
        if self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)
            self._runtime_dir = None


class RedisServer(_Server):
    """A Redis that keeps nothing on disk: a restart comes back empty, on the same port."""

    name = "redis"

    def __init__(self, base_dir: Path, password: str | None = None) -> None:
        super().__init__(base_dir)
        self.password = password
        self.server_bin = _which("redis-server")
        self.cli_bin = _which("redis-cli")

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    def cli(self, *args: str, timeout: float = 10.0) -> str:
        """Run one redis-cli command (authenticated when there is a password); its output."""
        command = [self.cli_bin, "-h", HOST, "-p", str(self.port), *args]
        env = {key: value for key, value in os.environ.items() if key != "REDISCLI_AUTH"}
        if self.password:
            env["REDISCLI_AUTH"] = self.password  # not on the command line, where ps shows it
        result = subprocess.run(
            command, capture_output=True, encoding="utf-8", env=env, timeout=timeout, check=False
        )
        return (result.stdout + result.stderr).strip()

    def _command(self) -> list[str]:
        command = [
            *(self.server_bin, "--bind", HOST, "--port", str(self.port)),
            *("--save", "", "--appendonly", "no", "--dir", str(self.base_dir)),
        ]
        if self.password:
            command += ["--requirepass", self.password]
        return command

    def _ready(self) -> bool:
        """It answers PING, and it is our process that answers (not another on the port)."""
        try:
            if self.cli("ping", timeout=PROBE_TIMEOUT) != "PONG":
                return False
            info = self.cli("info", "server", timeout=PROBE_TIMEOUT).splitlines()
        except subprocess.TimeoutExpired:  # something holds the port and never answers
            return False
        return self._process is not None and f"process_id:{self._process.pid}" in info


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _without_pg_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment minus PG* variables, which would redirect psql and friends elsewhere."""
    return {key: value for key, value in environ.items() if not key.startswith("PG")}


def _which(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise ServerError(f"{program} not found on PATH; `make servers` installs it")
    return found


def _postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL (/usr/lib/postgresql/N/bin), else the one on PATH."""

    def version(binary: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in binary.parent.parent.name.split(".") if part.isdigit())

    installed = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=version)
    if installed:
        return installed[-1].parent
    on_path = shutil.which("postgres")
    if on_path is not None:
        return Path(on_path).resolve().parent
    raise ServerError(
        "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin or on PATH; "
        "`make servers` installs them"
    )


def _postgres_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError(
            "running as root, but there is no `postgres` account to run PostgreSQL under "
            "(it refuses to run as root); `make servers` creates it with the package"
        ) from None


def _descendants(root: int) -> list[int]:
    """Children, grandchildren... of a process, from /proc (PostgreSQL's lead their own groups)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it just exited
        ppid = int(text[text.rfind(")") + 2 :].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found: list[int] = []
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie (which holds no port or memory any more)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return text[text.rfind(")") + 2 :].split()[0] != "Z"


# The safety net: servers started and not closed, killed at exit by the process that started them.
_LIVE: set[_Server] = set()


def _track(server: _Server) -> None:
    _LIVE.add(server)
    # Signal handlers can only be set from the main thread; a start from another one tries later.
    is_main = threading.current_thread() is threading.main_thread()
    if is_main and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _abandon_all() -> None:
    for server in list(_LIVE):
        if server._owner_pid == os.getpid():  # a forked child must not kill its parent's servers
            with contextlib.suppress(Exception):
                server._abandon()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """Kill the servers, then die of SIGTERM as the process would have without this hook."""
    _abandon_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


atexit.register(_abandon_all)
