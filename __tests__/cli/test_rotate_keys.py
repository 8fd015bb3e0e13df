"""`cryptomarket rotate-keys`, run as a user runs it (issue #15, defect 6)."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet
from pydantic import SecretStr

from __tests__.cli.test_data_commands import run
from cryptomarket.users.secrets import SecretBox

OLD, NEW = Fernet.generate_key().decode(), Fernet.generate_key().decode()


def add_people(database: Path, count: int) -> None:
    old = SecretBox([SecretStr(OLD)])
    now = datetime.now(UTC).isoformat()
    with sqlite3.connect(database) as connection:
        connection.executemany(
            "INSERT INTO crypto_person (user_id, client_id, client_secret_encrypted, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?)",
            [(f"u{n}", f"key-{n}", old.encrypt(f"secret-{n}"), now, now) for n in range(count)],
        )


def secrets_of(database: Path) -> list[bytes]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute("SELECT client_secret_encrypted FROM crypto_person").fetchall()
    return [bytes(secret) for (secret,) in rows]


async def test_check_then_rotate_then_check_again(tmp_path: Path) -> None:
    database = tmp_path / "keys.sqlite3"
    env = {"DATABASE_URL": f"sqlite:///{database}", "ENCRYPTION_KEYS": f"{NEW},{OLD}"}
    assert (await run("migrate", env=env))[0] == 0
    add_people(database, 12)

    code, output, errors = await run("rotate-keys", "--check", env=env)
    assert (code, output.strip().splitlines()[-1]) == (
        1,
        "0 secrets under the first key, 12 under an older key",
    ), errors

    code, output, errors = await run("rotate-keys", "--batch-size", "5", env=env)
    assert code == 0, errors
    assert "12 secrets re-encrypted under the first key, 0 already were" in output
    new_only = SecretBox([SecretStr(NEW)])
    assert sorted(new_only.decrypt(secret) for secret in secrets_of(database)) == sorted(
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
