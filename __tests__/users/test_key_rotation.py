"""Old encryption keys can retire (issue #15, defect 6): the rotation in batches, interrupted and
run again, and profile refreshes that re-encrypt what they read with an old key."""

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import Engine, insert, select, update

from __tests__.app_server import app_settings
from __tests__.databases import fresh_database_url
from __tests__.service import Service, running_service
from cryptomarket.core.db import create_sync_engine, urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.core.tables import Tables, build_tables
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.jobs.profiles import refresh_profiles
from cryptomarket.users.rotation import rotate_secrets
from cryptomarket.users.secrets import SecretBox

OLD, NEW, LOST = (Fernet.generate_key().decode() for _ in range(3))


def box(*keys: str) -> SecretBox:
    return SecretBox([SecretStr(key) for key in keys])


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database_url(request, request.param, tmp_path) as url:
        upgrade(urls_for(url).sync_url)
        yield url


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_sync_engine(urls_for(database_url).sync_url)
    yield engine
    engine.dispose()


def tables_of(engine: Engine) -> Tables:
    return build_tables(engine.dialect.name)


def add_people(engine: Engine, secrets: dict[str, bytes]) -> None:
    now = datetime.now(UTC)
    with engine.begin() as connection:
        for user_id, secret in secrets.items():
            connection.execute(
                insert(tables_of(engine).person).values(
                    user_id=user_id,
                    client_id=f"key-{user_id}",
                    client_secret_encrypted=secret,
                    created_at=now,
                    updated_at=now,
                )
            )


def stored_secrets(engine: Engine) -> dict[str, bytes]:
    person = tables_of(engine).person
    with engine.connect() as connection:
        rows = connection.execute(select(person.c.user_id, person.c.client_secret_encrypted))
        return {user_id: bytes(secret) for user_id, secret in rows}


class Interrupted(Exception):
    pass


def test_rotation_moves_every_secret_to_the_first_key_and_a_rerun_continues(
    engine: Engine,
) -> None:
    old_box, both = box(OLD), box(NEW, OLD)
    secrets = {f"u{n:02}": old_box.encrypt(f"secret-{n}") for n in range(7)}
    secrets["u90"] = box(NEW).encrypt("already-new")
    secrets["u99"] = box(LOST).encrypt("lost")  # under a key no longer configured
    add_people(engine, secrets)
    tables = tables_of(engine)

    before = rotate_secrets(engine, tables, both, dry_run=True)
    assert (before.current, before.old, before.unreadable, before.rotated) == (1, 7, 1, 0)
    assert stored_secrets(engine) == secrets  # a check changes nothing

    def stop_after_first_batch(rows: int) -> None:
        raise Interrupted  # as a Ctrl-C after the first commit would

    with pytest.raises(Interrupted):
        rotate_secrets(engine, tables, both, batch_size=3, on_batch=stop_after_first_batch)
    halfway = rotate_secrets(engine, tables, both, dry_run=True)
    assert (halfway.current, halfway.old) == (4, 4)  # the first batch stayed committed

    batches: list[int] = []
    census = rotate_secrets(engine, tables, both, batch_size=3, on_batch=batches.append)
    assert (census.rotated, census.current, census.unreadable) == (4, 4, 1)
    assert batches == [3, 3, 3]
    new_only = box(NEW)
    after = stored_secrets(engine)
    for n in range(7):
        assert new_only.decrypt(after[f"u{n:02}"]) == f"secret-{n}"  # OLD can now retire
    assert after["u99"] == secrets["u99"]  # left for its user to sign in again

    again = rotate_secrets(engine, tables, both)
    assert (again.rotated, again.current, again.old, again.unreadable) == (0, 8, 0, 1)


async def test_a_profile_refresh_re_encrypts_a_secret_read_with_an_old_key(
    simulator: Simulator, sqlite_url: str
) -> None:
    async with running_service(simulator, sqlite_url, ENCRYPTION_KEYS=f"{NEW},{OLD}") as service:
        await service.sign_in("alice")
        await set_secret(service, "alice", box(OLD).encrypt("sim-alice-secret"))
        await service.runtime.users.refresh_profile("alice")
        assert box(NEW).decrypt(await secret_of(service, "alice")) == "sim-alice-secret"


async def set_secret(service: Service, user_id: str, secret: bytes) -> None:
    database = service.runtime.database
    person = database.tables.person
    async with database.transaction() as connection:
        await connection.execute(
            update(person)
            .where(person.c.user_id == user_id)
            .values(client_secret_encrypted=secret, profile_fetched_at=None)
        )


async def secret_of(service: Service, user_id: str) -> bytes:
    database = service.runtime.database
    person = database.tables.person
    async with database.reading() as connection:
        result = await connection.execute(
            select(person.c.client_secret_encrypted).where(person.c.user_id == user_id)
        )
        return bytes(result.scalar_one())


async def test_the_profile_job_re_encrypts_what_it_reads_with_an_old_key(
    simulator: Simulator, engine: Engine, database_url: str
) -> None:
    add_people(engine, {"alice": box(OLD).encrypt("sim-alice-secret")})
    tables = tables_of(engine)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(update(tables.person).values(client_id="sim-alice"))
        connection.execute(
            insert(tables.sessions).values(
                token_hash="t" * 64, user_id="alice", created_at=now, expires_at=now + timedelta(1)
            )
        )
    settings = app_settings(
        DATABASE_URL=database_url, DERIBIT_WS_URL=simulator.url, ENCRYPTION_KEYS=f"{NEW},{OLD}"
    )
    refreshed = await asyncio.to_thread(refresh_profiles, settings, engine, tables, None)
    assert refreshed == 1
    assert box(NEW).decrypt(stored_secrets(engine)["alice"]) == "sim-alice-secret"
