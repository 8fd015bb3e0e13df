"""docker-compose.yml, checked as a schema since no Docker engine runs here.

What SPEC section 9 and issue 5 ask of it: the services exist and run the right commands, only
nginx publishes a port, Redis needs a password, every service has a memory limit and together
they fit a 1 GB VPS, every long-running service has a health check, migrate runs once before the
Python services start, and the settings come from `.env`. Beyond the shape: the environment
compose hands each Python service passes the application's own settings validation, and the
health check commands that are code of ours (the API's and the Redis probe) are run for real
against a replica and a password-protected Redis.
"""

# The health checks run as subprocesses: the Python interpreter with a command from the file.
# ruff: noqa: S603

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from __tests__.deploy.files import (
    API_COMMAND,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    compose_bytes,
    is_compose_duration,
)
from __tests__.servers import RedisServer, free_port
from __tests__.service import Service
from cryptomarket.core.config import Settings
from cryptomarket.core.db import database_urls

PYTHON_SERVICES = ("migrate", "api", "ingest", "worker", "persister", "beat")
REQUIRED_SERVICES = {*PYTHON_SERVICES, "redis", "db", "nginx"}
ONE_SHOT = {"migrate"}
ONE_GB = 10**9  # bytes: "less than 1 GB" read strictly (1 GiB would allow 7 % more)
# Variables of the compose file that are not settings of the application (.env.example).
COMPOSE_ONLY_VARIABLES = {"REDIS_PASSWORD", "HTTP_PORT", "HTTPS_PORT"}
REQUIRED_VARIABLES = {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "ENCRYPTION_KEYS"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):  # the KEY=value list form
        environment = dict(item.split("=", 1) for item in environment)
    return {str(key): str(value) for key, value in environment.items()}


def _memory_limit(service: dict[str, Any]) -> int:
    limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
    value = limits.get("memory", service.get("mem_limit"))
    assert value is not None, "no memory limit (deploy.resources.limits.memory or mem_limit)"
    return compose_bytes(value)


def _healthcheck_script(service: dict[str, Any]) -> str:
    """The Python source of a `CMD python -c <source>` health check."""
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    script: str = test[3]
    return script


def test_the_services_exist_and_run_their_commands(services: dict[str, Any]) -> None:
    assert services.keys() >= REQUIRED_SERVICES
    commands = {name: services[name]["command"] for name in PYTHON_SERVICES}
    assert commands["api"] == API_COMMAND
    assert commands["ingest"] == ["cryptomarket", "ingest"]
    assert commands["migrate"] == ["cryptomarket", "migrate"]
    for worker in ("worker", "persister"):
        assert commands[worker][:4] == ["celery", "-A", "cryptomarket.worker", "worker"]
    assert commands["beat"][:4] == ["celery", "-A", "cryptomarket.worker", "beat"]
    images = {services[name].get("image") for name in PYTHON_SERVICES}
    assert len(images) == 1, "every Python service runs the same image"
    for name in PYTHON_SERVICES:
        assert services[name]["build"] == ".", name  # built from the project's Dockerfile


def test_persistence_has_a_worker_of_its_own(services: dict[str, Any]) -> None:
    """The persist queue and the maintenance queue are each consumed by one worker, so the 1 s
    persist job never queues behind a job of minutes (the Celery test runs these commands)."""

    def queues(name: str) -> set[str]:
        options = [part for part in services[name]["command"] if part.startswith("--queues=")]
        assert len(options) == 1, (name, services[name]["command"])
        return set(options[0].removeprefix("--queues=").split(","))

    assert queues("persister") == {"persist"}
    assert queues("worker") == {"maintenance"}
    for name in ("worker", "persister"):
        assert "--concurrency=1" in services[name]["command"], name
        assert "--pool=solo" not in services[name]["command"], name  # time limits hold


def test_only_nginx_publishes_ports(services: dict[str, Any]) -> None:
    publishing = {name for name, service in services.items() if service.get("ports")}
    assert publishing == {"nginx"}
    for name, service in services.items():
        assert service.get("network_mode") != "host", name  # would publish everything
    targets = {str(port).rsplit(":", 1)[-1] for port in services["nginx"]["ports"]}
    assert targets == {"80", "443"}


def test_redis_requires_a_password(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    password = command[command.index("--requirepass") + 1]
    assert re.fullmatch(r"\$\{REDIS_PASSWORD:\?[^}]+\}", password), password
    # Clients authenticate: the application with the password in its URL, the check with it.
    for name in PYTHON_SERVICES:
        url = _environment(services[name])["REDIS_URL"]
        assert url.startswith("redis://:${REDIS_PASSWORD:?"), (name, url)
        assert url.endswith("@redis:6379/0"), (name, url)
    check = " ".join(services["redis"]["healthcheck"]["test"])
    authenticated = "-a " in check or (
        "REDISCLI_AUTH" in _environment(services["redis"])
        and "${REDIS_PASSWORD" in _environment(services["redis"])["REDISCLI_AUTH"]
    )
    assert "redis-cli" in check and "ping" in check and authenticated


def test_memory_limits_fit_a_1_gb_vps(services: dict[str, Any]) -> None:
    """What can run at the same time fits: the one-shot migrate ends before any service that
    waits for it starts (checked below), so the two phases are counted apart."""
    limits = {name: _memory_limit(service) for name, service in services.items()}
    assert all(limit > 0 for limit in limits.values()), limits
    after_migrate = {
        name for name, service in services.items() if "migrate" in service.get("depends_on", {})
    }
    for name in after_migrate:
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name
    steady = {name: limit for name, limit in limits.items() if name not in ONE_SHOT}
    migrating = {name: limit for name, limit in limits.items() if name not in after_migrate}
    for phase in (steady, migrating):
        total = sum(phase.values())
        assert total < ONE_GB, f"memory limits add up to {total / 2**20:.0f} MiB: {phase}"


def test_every_long_running_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for key in ("interval", "timeout", "start_period"):
            assert is_compose_duration(check.get(key)), (name, key, check.get(key))
        assert isinstance(check.get("retries"), int), name
    assert "/health" in _healthcheck_script(services["api"])
    assert "pg_isready" in " ".join(services["db"]["healthcheck"]["test"])
    assert "/nginx-health" in " ".join(services["nginx"]["healthcheck"]["test"])


def test_migrate_runs_once_before_the_python_services(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    for name in ("api", "ingest", "worker", "persister", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["db"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert services[name]["restart"] == "unless-stopped", name
    assert services["nginx"]["depends_on"]["api"]["condition"] == "service_healthy"


def test_settings_come_from_env_in_distributed_mode(services: dict[str, Any]) -> None:
    for name in PYTHON_SERVICES:
        service = services[name]
        env_file = service.get("env_file")
        paths = [env_file] if isinstance(env_file, str | dict) else env_file
        assert [p["path"] if isinstance(p, dict) else p for p in paths] == [".env"], name
        environment = _environment(service)
        assert environment["DEBUG"] == "False", name  # PostgreSQL
        assert environment["POSTGRES_HOST"] == "db", name
        assert environment["DATABASE_URL"] == "", name  # a DATABASE_URL in .env must not win
        assert environment["ENCRYPTION_KEYS"].startswith("${ENCRYPTION_KEYS:?"), name
    assert _environment(services["api"])["FORWARDED_ALLOW_IPS"] == "*"  # behind nginx only


def test_every_variable_is_a_setting_or_documented(compose: dict[str, Any]) -> None:
    """`${VAR}`s are .env.example's settings or the compose-only few the README documents;
    the secrets are required (compose refuses to start without them)."""
    text = COMPOSE_FILE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))
    settings = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert used - settings <= COMPOSE_ONLY_VARIABLES, used - settings - COMPOSE_ONLY_VARIABLES
    required = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*):\?", text))
    assert required == REQUIRED_VARIABLES
    assert "pgdata" in compose["volumes"]


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}`, as `docker compose` reads them."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3)
        found = variables.get(name, "")
        if operator == ":-" and not found:
            return argument
        assert operator != ":?" or found, f"compose would stop: {argument}"
        return found

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", substitute, value)


def test_each_python_service_gets_settings_the_application_accepts(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """.env made from .env.example plus the three secrets the README asks for: what compose
    hands each Python service passes the application's own validation, in distributed mode
    on the compose network's PostgreSQL."""
    dotenv = dict(re.findall(r"^([A-Z_][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    dotenv |= {
        "POSTGRES_PASSWORD": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "REDIS_PASSWORD": "f3a9c0d1e2b4a5968778695a4b3c2d1e",
        "ENCRYPTION_KEYS": Fernet.generate_key().decode(),
    }
    for name in PYTHON_SERVICES:
        container = dotenv | {
            key: _interpolate(value, dotenv) for key, value in _environment(services[name]).items()
        }
        with monkeypatch.context() as patched:
            for key, value in container.items():
                patched.setenv(key, value)
            settings = Settings(_env_file=None)
        assert settings.distributed, name
        assert f"redis://:{dotenv['REDIS_PASSWORD']}@redis:6379/0" == settings.REDIS_URL
        urls = database_urls(settings)
        assert (urls.dialect, urls.sync_url.host, urls.sync_url.port) == ("postgresql", "db", 5432)


# The health check commands, run


async def test_the_api_health_check_passes_on_a_serving_replica(
    services: dict[str, Any], service: Service
) -> None:
    script = _healthcheck_script(services["api"])
    port = service.base_url.rsplit(":", 1)[1]
    assert script.count("127.0.0.1:8003") == 1
    healthy = await _run_python(script.replace("127.0.0.1:8003", f"127.0.0.1:{port}"))
    assert healthy.returncode == 0, healthy.stderr
    nobody = await _run_python(script.replace("127.0.0.1:8003", f"127.0.0.1:{free_port()}"))
    assert nobody.returncode != 0


def test_the_redis_health_check_speaks_to_a_password_protected_redis(
    services: dict[str, Any], tmp_path: Path
) -> None:
    script = _healthcheck_script(services["ingest"])
    for name in ("worker", "persister", "beat"):
        assert _healthcheck_script(services[name]) == script
    password = "f3a9c0d1e2b4a5968778695a4b3c2d1e"  # hex, as the README says to make it
    redis = RedisServer(tmp_path / "redis", password=password)
    try:
        redis.start()
        right = _run_python_sync(script, REDIS_URL=f"redis://:{password}@127.0.0.1:{redis.port}/0")
        assert right.returncode == 0, right.stderr
        wrong = _run_python_sync(script, REDIS_URL=f"redis://:wrong@127.0.0.1:{redis.port}/0")
        assert wrong.returncode != 0
    finally:
        redis.close()
    gone = _run_python_sync(script, REDIS_URL=f"redis://:{password}@127.0.0.1:{redis.port}/0")
    assert gone.returncode != 0


def _run_python_sync(script: str, **environment: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def _run_python(script: str) -> subprocess.CompletedProcess[str]:
    """Run a check while the replica keeps serving in this event loop."""
    return await asyncio.to_thread(_run_python_sync, script)
