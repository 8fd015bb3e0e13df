"""The real servers the suite relies on: reachable at their URLs, back at the same address after a
stop, a crash or a restart, and loud when they cannot start.

The checks go through the servers' own clients (psql, redis-cli) given only the fixtures' URLs,
so they prove exactly what application code will be handed.
"""

import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from __tests__.servers import HOST, PostgresServer, RedisServer, ServerError


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603  # the servers' own client binaries
        command, capture_output=True, encoding="utf-8", env=env, timeout=30, check=False
    )


def psql(server: PostgresServer, url: str, sql: str) -> subprocess.CompletedProcess[str]:
    """psql given nothing but a libpq URL (no -h/-p: the URL must be complete)."""
    options = ("-X", "-A", "-t", "-v", "ON_ERROR_STOP=1")
    return run(str(server.bin_dir / "psql"), *options, url, "-c", sql)


def query(server: PostgresServer, url: str, sql: str) -> str:
    result = psql(server, url, sql)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def redis_cli(server: RedisServer, url: str, *args: str) -> str:
    """redis-cli at what the URL says, read the way redis-py reads it.

    Not `redis-cli -u`: Redis 7.0's sends `AUTH "" password` for `redis://:password@`, which
    fails, where redis-py (and the URL convention) send the password alone.
    """
    parts = urlsplit(url)
    assert parts.scheme == "redis"
    assert parts.hostname is not None
    assert parts.port is not None
    env = {key: value for key, value in os.environ.items() if key != "REDISCLI_AUTH"}
    if parts.password is not None:
        env["REDISCLI_AUTH"] = unquote(parts.password)
    where = ("-h", parts.hostname, "-p", str(parts.port), "-n", parts.path.lstrip("/") or "0")
    result = run(server.cli_bin, *where, *args, env=env)
    return (result.stdout + result.stderr).strip()


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


# PostgreSQL


def test_postgres_answers_at_its_url(postgres_server: PostgresServer) -> None:
    server = postgres_server
    assert query(server, server.url(), "select 1") == "1"
    assert server.host == HOST
    expected = f"postgresql+asyncpg://postgres@127.0.0.1:{server.port}/cryptomarket"
    assert server.url("asyncpg", "cryptomarket") == expected
    assert server.url("postgresql+asyncpg", "cryptomarket") == expected


def test_postgres_creates_databases_from_templates_and_drops_them_while_in_use(
    postgres_server: PostgresServer,
) -> None:
    server = postgres_server
    template, copy = server.url(database="servers_template"), server.url(database="servers_copy")
    holder: subprocess.Popen[bytes] | None = None
    try:
        server.create_database("servers_template")
        query(server, template, "create table seeded (v int); insert into seeded values (42)")
        server.create_database("servers_copy", template="servers_template")
        assert query(server, copy, "select v from seeded") == "42"

        holder = subprocess.Popen(  # noqa: S603  # a session that is still open at the drop
            [str(server.bin_dir / "psql"), "-X", copy, "-c", "select pg_sleep(60)"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        sessions = "select count(*) from pg_stat_activity where datname = 'servers_copy'"
        deadline = time.monotonic() + 10
        while server.psql(sessions) != "1":  # wait for psql, an external process, to connect
            assert time.monotonic() < deadline, "the holding psql session never connected"
            time.sleep(0.02)
        server.drop_database("servers_copy")
        assert holder.wait(10) != 0, "its session was terminated"

        server.drop_database("servers_template")
        gone = psql(server, template, "select 1")
        assert gone.returncode != 0
        assert 'database "servers_template" does not exist' in gone.stderr
    finally:
        if holder is not None and holder.poll() is None:
            holder.kill()
            holder.wait()
        server.drop_database("servers_copy")
        server.drop_database("servers_template")


def test_postgres_comes_back_on_its_port_with_its_data_after_stop_crash_and_restart(
    postgres_server: PostgresServer,
) -> None:
    server = postgres_server
    port, url = server.port, server.url(database="servers_restart")
    try:
        server.create_database("servers_restart")
        query(server, url, "create table kept (v text); insert into kept values ('before')")

        server.stop()
        assert not server.running
        assert refuses_connections(port)
        assert "Connection refused" in psql(server, url, "select 1").stderr
        server.start()
        assert server.port == port
        assert query(server, url, "select v from kept") == "before"

        server.kill()
        assert not server.running
        assert refuses_connections(port)
        server.restart()
        assert server.port == port
        assert query(server, url, "select v from kept") == "before"

        server.restart()
        assert server.running
        assert server.port == port
        assert query(server, url, "select v from kept") == "before"
    finally:
        server.start()  # whatever happened above, the next test finds it running
        server.drop_database("servers_restart")


# Redis


def test_redis_answers_at_its_url(redis_server: RedisServer) -> None:
    assert redis_cli(redis_server, redis_server.url, "ping") == "PONG"
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"


def test_redis_with_a_password_requires_it(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="s3cret/@:")
    try:
        server.start()
        assert server.url == f"redis://:s3cret%2F%40%3A@127.0.0.1:{server.port}/0"
        assert redis_cli(server, server.url, "ping") == "PONG"
        anonymous = f"redis://127.0.0.1:{server.port}/0"
        assert "NOAUTH" in redis_cli(server, anonymous, "ping")
        wrong = f"redis://:wrong@127.0.0.1:{server.port}/0"
        assert "WRONGPASS" in redis_cli(server, wrong, "ping")
    finally:
        server.close()
    assert not server.running


def test_redis_comes_back_on_its_port_after_stop_crash_and_restart(
    redis_server: RedisServer,
) -> None:
    server = redis_server
    port = server.port
    try:
        server.stop()
        assert not server.running
        assert refuses_connections(port)
        server.start()
        assert redis_cli(server, server.url, "ping") == "PONG"

        server.kill()
        assert refuses_connections(port)
        server.restart()
        assert server.port == port
        assert redis_cli(server, server.url, "ping") == "PONG"

        assert redis_cli(server, server.url, "set", "servers:key", "value") == "OK"
        server.restart()
        assert server.port == port
        assert redis_cli(server, server.url, "exists", "servers:key") == "0", "nothing is saved"
    finally:
        server.start()


def test_a_server_that_cannot_start_fails_with_its_own_log(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    try:
        server.start()
        port = server.port
        server.stop()
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind((HOST, port))
            squatter.listen()
            with pytest.raises(ServerError, match="Address already in use") as failure:
                server.start()
        assert str(server.log_path) in str(failure.value)
        assert not server.running
        server.start()  # the port is free again: same port, running
        assert server.port == port
    finally:
        server.close()
