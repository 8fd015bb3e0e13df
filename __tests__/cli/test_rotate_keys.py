"""`cryptomarket rotate-keys`, run as a user runs it (issue #15, defect 6)."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import Engine, insert, select

from __tests__.cli.test_data_commands import run
from __tests__.databases import fresh_database_url
from cryptomarket.core.db import create_sync_engine, urls_for
from cryptomarket.core.tables import build_tables
from cryptomarket.users.secrets import SecretBox

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database_url(request, request.param, tmp_path) as url:
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_sync_engine(urls_for(database_url).sync_url)
    yield engine
    engine.dispose()


def add_people(engine: Engine, count: int) -> None:
    old = SecretBox([SecretStr(OLD)])
    now = datetime.now(UTC)
    person = build_tables(engine.dialect.name).person
    with engine.begin() as connection:
        connection.execute(
            insert(person),
            [
                {
                    "user_id": f"u{n}",
                    "client_id": f"key-{n}",
                    "client_secret_encrypted": old.encrypt(f"secret-{n}"),
                    "created_at": now,
                    "updated_at": now,
                }
                for n in range(count)
            ],
        )


def secrets_of(engine: Engine) -> list[bytes]:
    person = build_tables(engine.dialect.name).person
    with engine.connect() as connection:
        rows = connection.execute(select(person.c.client_secret_encrypted)).scalars()
        return [bytes(secret) for secret in rows]


async def test_check_then_rotate_then_check_again(database_url: str, engine: Engine) -> None:
    env = {"DATABASE_URL": database_url, "ENCRYPTION_KEYS": f"{NEW},{OLD}"}
    assert (await run("migrate", env=env))[0] == 0
    add_people(engine, 12)

    code, output, errors = await run("rotate-keys", "--check", env=env)
    assert (code, output.strip().splitlines()[-1]) == (
        1,
        "0 secrets under the first key, 12 under an older key",
    ), errors

    code, output, errors = await run("rotate-keys", "--batch-size", "5", env=env)
    assert code == 0, errors
    assert "12 secrets re-encrypted under the first key, 0 already were" in output
    new_only = SecretBox([SecretStr(NEW)])
    assert sorted(new_only.decrypt(secret) for secret in secrets_of(engine)) == sorted(
        f"secret-{n}" for n in range(12)
    )

    code, output, _ = await run("rotate-keys", "--check", env=env)
    assert (code, output.strip().splitlines()[-1]) == (
        0,
        "12 secrets under the first key, 0 under an older key",
    )
    code, output, _ = await run("rotate-keys", env=env)  # nothing left to do
    assert (code, "0 secrets re-encrypted under the first key, 12 already were" in output) == (
        0,
        True,
    )


async def test_without_keys_or_database_it_fails_in_one_line(tmp_path: Path) -> None:
    code, _, errors = await run("rotate-keys", env={"DATABASE_URL": "sqlite:///x.sqlite3"})
    assert code == 2
    assert errors.strip() == (
        "cryptomarket rotate-keys: ENCRYPTION_KEYS is not set: there is no key to re-encrypt under"
    )
    missing = tmp_path / "none" / "db.sqlite3"
    env = {"DATABASE_URL": f"sqlite:///{missing}", "ENCRYPTION_KEYS": NEW}
    code, _, errors = await run("rotate-keys", env=env)
    assert code == 2 and errors.startswith("cryptomarket rotate-keys: sqlite database:"), errors
    assert "Traceback" not in errors
