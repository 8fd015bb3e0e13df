"""Refresh the Deribit data of active users (a live session) before it ages out of the cache."""

import json
import logging
from datetime import UTC, datetime

from redis import Redis
from sqlalchemy import Engine, select, update

from cryptomarket.core.config import Settings
from cryptomarket.core.errors import AppError
from cryptomarket.core.tables import Tables
from cryptomarket.deribit.auth import Credentials
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.distributed.cache import PREFIX
from cryptomarket.jobs.deribit import with_deribit
from cryptomarket.users.schemas import Profile, UserOut
from cryptomarket.users.secrets import SecretBox, SecretUnreadable
from cryptomarket.users.service import (
    PROFILE_REFRESH_AFTER,
    PROFILE_TTL,
    fetch_profile,
    profile_key,
)

logger = logging.getLogger("cryptomarket.jobs.profiles")

USERS_PER_RUN = 100


def refresh_profiles(
    settings: Settings, engine: Engine, tables: Tables, redis: Redis | None
) -> int:
    """Fetch again the profiles older than PROFILE_REFRESH_AFTER of users with a live session;
    returns how many were refreshed. A user whose key Deribit refuses (or that cannot be read)
    is logged and tried again PROFILE_REFRESH_AFTER later, behind the others: `profile_fetched_at`
    is when the profile was last fetched or tried (the profile keeps its own `fetched_at`)."""
    now = datetime.now(UTC)
    person, sessions = tables.person, tables.sessions
    live = select(sessions.c.user_id).where(
        sessions.c.revoked_at.is_(None), sessions.c.expires_at > now
    )
    with engine.connect() as connection:
        rows = connection.execute(
            select(person.c.user_id, person.c.client_id, person.c.client_secret_encrypted)
            .where(
                person.c.user_id.in_(live),
                (person.c.profile_fetched_at.is_(None))
                | (person.c.profile_fetched_at < now - PROFILE_REFRESH_AFTER),
            )
            .order_by(person.c.profile_fetched_at)
            .limit(USERS_PER_RUN)
        ).all()
    if not rows:
        return 0
    box = SecretBox(settings.ENCRYPTION_KEYS)
    keys: list[tuple[str, str, str]] = []
    # Secrets read with an old key, re-encrypted under the first one as they are refreshed.
    rotations: dict[str, tuple[bytes, bytes]] = {}
    read_as = {row.user_id: row.client_secret_encrypted for row in rows}  # each one tried
    for row in rows:
        stored = row.client_secret_encrypted
        try:
            keys.append((row.user_id, row.client_id, box.decrypt(stored)))
            if box.needs_rotation(stored):
                rotations[row.user_id] = (stored, box.rotate(stored))
        except SecretUnreadable:
            logger.warning(
                "profile of %s not refreshed: its key can no longer be read", row.user_id
            )

    # The user ids of one key share one fetch: one socket and one authentication per key, not
    # per user id (an account may claim several), so a run spends few of Deribit's sessions.
    users_of: dict[Credentials, list[str]] = {}
    for user_id, client_id, secret in keys:
        users_of.setdefault(Credentials(client_id, secret), []).append(user_id)

    async def fetch(pool: DeribitPool) -> list[tuple[str, str, Profile]]:
        fetched = []
        for credentials, user_ids in users_of.items():
            try:
                profile = await fetch_profile(pool, credentials)
            except AppError as error:
                logger.warning(
                    "profiles of %s not refreshed: %s", ", ".join(user_ids), error.detail
                )
                continue
            fetched += [(user_id, credentials.client_id, profile) for user_id in user_ids]
        return fetched

    fetched = with_deribit(settings, fetch)
    with engine.begin() as connection:
        # Every one tried goes behind the others, fetched or not: a key Deribit refuses is not
        # asked again every run, nor do a hundred of them hold back every other user.
        connection.execute(
            update(person).where(person.c.user_id.in_(read_as)).values(profile_fetched_at=now)
        )
        kept = []
        for user_id, client_id, profile in fetched:
            stored_now = connection.execute(  # not if a sign-in stored another key meanwhile
                update(person)
                .where(
                    person.c.user_id == user_id,
                    person.c.client_secret_encrypted == read_as[user_id],
                )
                .values(
                    profile=profile.model_dump(mode="json"), profile_fetched_at=profile.fetched_at
                )
            )
            if not stored_now.rowcount:
                continue
            kept.append((user_id, client_id, profile))
            if user_id in rotations:  # only if no sign-in stored another secret meanwhile
                old, new = rotations[user_id]
                connection.execute(
                    update(person)
                    .where(person.c.user_id == user_id, person.c.client_secret_encrypted == old)
                    .values(client_secret_encrypted=new)
                )
    if redis is not None:
        ttl_ms = int(PROFILE_TTL.total_seconds() * 1000)
        for user_id, client_id, profile in kept:
            out = UserOut(user_id=user_id, client_id=client_id, profile=profile)
            redis.set(
                PREFIX + profile_key(user_id), json.dumps(out.model_dump(mode="json")), px=ttl_ms
            )
    return len(kept)
