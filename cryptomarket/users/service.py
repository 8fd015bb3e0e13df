"""Signing in with a Deribit key, sessions, and the user's Deribit account data."""

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptomarket.core.db import Database
from cryptomarket.core.errors import (
    AppError,
    Conflict,
    Forbidden,
    NotAuthenticated,
    NotFound,
    TooMany,
    Unavailable,
)
from cryptomarket.deribit.auth import Credentials
from cryptomarket.deribit.errors import (
    DeribitError,
    DeribitTransportError,
    InvalidCredentials,
    LoginOverLimit,
    TooManyRequests,
    Unauthorized,
)
from cryptomarket.deribit.errors import Forbidden as DeribitForbidden
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.kit.batched import Batched
from cryptomarket.users.repository import Claimed, Owner, UserRepository
from cryptomarket.users.schemas import Profile, SessionCreated, UserOut
from cryptomarket.users.secrets import SecretBox, SecretUnreadable

logger = logging.getLogger("cryptomarket.users")

PROFILE_TTL = timedelta(hours=27)  # served from the store this long (the issue: 27 hours)
PROFILE_REFRESH_AFTER = timedelta(hours=1)  # older than this: refreshed in the background
# After a background refresh failed (the key refused, the account throttled): reads of the user
# serve what is kept and start no other for this long, not one Deribit login per read.
REFRESH_RETRY_AFTER = 300.0


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def profile_key(user_id: str) -> str:
    return f"profile:{user_id}"


class ProfileCache(Protocol):
    """A shared cache (Redis in distributed mode): JSON values with a TTL."""

    async def get(self, key: str) -> Any | None: ...

    async def set(self, key: str, value: Any, ttl: timedelta) -> None: ...


class DeribitRefused(AppError):
    status_code = 401
    code = "invalid_credentials"


class UserService:
    def __init__(
        self,
        database: Database,
        pool: DeribitPool,
        box: SecretBox,
        *,
        session_ttl: timedelta,
        cache: ProfileCache | None = None,
        max_user_ids: int = 5,
    ) -> None:
        self.database = database
        self.pool = pool
        self.box = box
        self.session_ttl = session_ttl
        self.cache = cache
        self.max_user_ids = max_user_ids
        self._refreshing: set[str] = set()
        self._refresh_failed: OrderedDict[str, float] = OrderedDict()  # user -> monotonic time
        self._tasks: set[asyncio.Task[None]] = set()
        self._fetches: dict[Credentials, asyncio.Future[Profile]] = {}
        # Sessions asked for at about once (a storm of reconnecting streams) share one query.
        self._owners: Batched[str, Owner] = Batched(self._session_owners)

    async def sign_in(self, user_id: str, client_id: str, client_secret: str) -> SessionCreated:
        """Check the key with Deribit, keep the user, open a session."""
        profile = await self._fetch_profile(Credentials(client_id, client_secret))
        now = datetime.now(UTC)
        token = secrets.token_urlsafe(32)
        expires_at = now + self.session_ttl
        async with self.database.transaction() as connection:
            users = UserRepository(connection, self.database.tables)
            await users.lock_account(profile.account_id)
            claimed = await users.claim(
                user_id,
                client_id=client_id,
                secret=self.box.encrypt(client_secret),
                account_id=profile.account_id,
                profile=profile.model_dump(mode="json"),
                now=now,
            )
            if claimed is Claimed.TAKEN:
                raise Conflict(
                    f"user_id {user_id!r} belongs to another Deribit account; choose another id",
                    code="user_id_taken",
                )
            if claimed is Claimed.NEW:
                await self._within_user_id_limit(users, profile.account_id, user_id)
            await users.add_session(token_hash(token), user_id, now=now, expires_at=expires_at)
        logger.info("user %s signed in (Deribit account %s)", user_id, profile.account_id)
        await self._remember(UserOut(user_id=user_id, client_id=client_id, profile=profile))
        return SessionCreated(user_id=user_id, token=token, expires_at=expires_at, profile=profile)

    async def _within_user_id_limit(
        self, users: UserRepository, account_id: int, user_id: str
    ) -> None:
        """A new user id past the account's limit: 429, and the transaction rolls it back.
        Ids the account had before a lowered limit keep working; only new ones are refused."""
        owned = await users.user_ids_of_account(account_id)
        if len(owned) <= self.max_user_ids:
            return
        others = [owned_id for owned_id in owned if owned_id != user_id]
        shown = ", ".join(others[:10]) + (", ..." if len(others) > 10 else "")
        raise TooMany(
            f"this Deribit account already has {len(others)} user ids, the most allowed "
            f"(MAX_USER_IDS_PER_ACCOUNT={self.max_user_ids}); sign in with one of them: {shown}",
            code="too_many_user_ids",
        )

    async def sign_out(self, token: str) -> None:
        async with self.database.transaction() as connection:
            await UserRepository(connection, self.database.tables).revoke_session(
                token_hash(token), datetime.now(UTC)
            )

    async def user_of_token(self, token: str) -> Owner | None:
        """The user (and Deribit account) of a live session token, or None."""
        if not token or len(token) > 256:
            return None
        return await self._owners.get(token_hash(token))

    async def _session_owners(self, token_hashes: list[str]) -> dict[str, Owner]:
        async with self.database.reading() as connection:
            return await UserRepository(connection, self.database.tables).session_owners(
                token_hashes, datetime.now(UTC)
            )

    async def user_of_key(self, user_id: str, client_id: str, client_secret: str) -> Owner | None:
        """The seed's headers: the user (and Deribit account) if this key matches the one
        stored for the user, else None."""
        async with self.database.reading() as connection:
            person = await UserRepository(connection, self.database.tables).get(user_id)
        if person is None or not hmac.compare_digest(person.client_id.encode(), client_id.encode()):
            return None
        try:
            stored = self.box.decrypt(person.client_secret_encrypted)
        except SecretUnreadable:
            return None
        if not hmac.compare_digest(stored.encode(), client_secret.encode()):
            return None
        if self.box.needs_rotation(person.client_secret_encrypted):
            async with self.database.transaction() as connection:
                await UserRepository(connection, self.database.tables).replace_secret(
                    user_id,
                    person.client_secret_encrypted,
                    self.box.rotate(person.client_secret_encrypted),
                )
        return Owner(user_id, person.deribit_account_id)

    async def user(self, user_id: str) -> UserOut:
        """The user's Deribit data: from the cache or the store while fresh, refreshed when it
        ages."""
        if (cached := await self._cached(user_id)) is not None and cached.profile is not None:
            age = datetime.now(UTC) - cached.profile.fetched_at
            if age < PROFILE_TTL:
                if age >= PROFILE_REFRESH_AFTER:
                    self._refresh_later(user_id)
                return cached
        async with self.database.reading() as connection:
            person = await UserRepository(connection, self.database.tables).get(user_id)
        if person is None:
            raise NotFound(f"no user {user_id!r}")
        profile = Profile.model_validate(person.profile) if person.profile else None
        age = datetime.now(UTC) - profile.fetched_at if profile else PROFILE_TTL
        if age >= PROFILE_TTL:
            profile = await self.refresh_profile(user_id)
        elif age >= PROFILE_REFRESH_AFTER:
            self._refresh_later(user_id)
        out = UserOut(user_id=user_id, client_id=person.client_id, profile=profile)
        if profile is not None and age < PROFILE_TTL:
            await self._remember(out)
        return out

    async def refresh_profile(self, user_id: str) -> Profile:
        """Fetch the user's data from Deribit now with the stored key."""
        async with self.database.reading() as connection:
            person = await UserRepository(connection, self.database.tables).get(user_id)
        if person is None:
            raise NotFound(f"no user {user_id!r}")
        try:
            secret = self.box.decrypt(person.client_secret_encrypted)
        except SecretUnreadable:
            raise NotAuthenticated(
                "the stored Deribit key can no longer be read; sign in again", code="sign_in_again"
            ) from None
        profile = await self._fetch_profile(Credentials(person.client_id, secret))
        stored = person.client_secret_encrypted
        async with self.database.transaction() as connection:
            users = UserRepository(connection, self.database.tables)
            dumped = profile.model_dump(mode="json")
            if not await users.set_profile(
                user_id, dumped, profile.fetched_at, fetched_with=stored
            ):
                return profile  # a sign-in stored another key meanwhile, and its profile
            if self.box.needs_rotation(stored):  # read with an old key: store it under the new
                await users.replace_secret(user_id, stored, self.box.rotate(stored))
        await self._remember(UserOut(user_id=user_id, client_id=person.client_id, profile=profile))
        return profile

    async def _cached(self, user_id: str) -> UserOut | None:
        if self.cache is None:
            return None
        value = await self.cache.get(profile_key(user_id))
        if value is None:
            return None
        try:
            return UserOut.model_validate(value)
        except ValueError:
            return None

    async def _remember(self, out: UserOut) -> None:
        """Cache the user's data for as long as it may be served (PROFILE_TTL from its fetch)."""
        if self.cache is None or out.profile is None:
            return
        left = PROFILE_TTL - (datetime.now(UTC) - out.profile.fetched_at)
        if left > timedelta(0):
            await self.cache.set(profile_key(out.user_id), out.model_dump(mode="json"), left)

    def _refresh_later(self, user_id: str) -> None:
        now = time.monotonic()
        while self._refresh_failed and next(iter(self._refresh_failed.values())) < now - (
            REFRESH_RETRY_AFTER
        ):
            self._refresh_failed.popitem(last=False)  # in failure order: the oldest first
        if user_id in self._refreshing or user_id in self._refresh_failed:
            return
        self._refreshing.add(user_id)

        async def refresh() -> None:
            try:
                await self.refresh_profile(user_id)
            except Exception as error:
                if not isinstance(error, Unavailable):  # Deribit away: the next read may retry
                    self._refresh_failed[user_id] = time.monotonic()
                if isinstance(error, AppError):
                    logger.warning("profile of %s not refreshed: %s", user_id, error.detail)
                else:
                    logger.exception("profile of %s not refreshed", user_id)
            finally:
                self._refreshing.discard(user_id)

        task = asyncio.create_task(refresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_profile(self, credentials: Credentials) -> Profile:
        """One fetch per key at a time: the user ids of one key that sign in or refresh together
        share a socket and an authentication (each counts against Deribit's limits)."""
        pending = self._fetches.get(credentials)
        if pending is None:
            pending = asyncio.ensure_future(fetch_profile(self.pool, credentials))
            self._fetches[credentials] = pending

            def done(future: asyncio.Future[Profile]) -> None:
                self._fetches.pop(credentials, None)
                if not future.cancelled():
                    future.exception()  # read, so that no waiter left is not an error

            pending.add_done_callback(done)
        return await asyncio.shield(pending)  # a caller who goes away leaves it to the others

    async def stop(self) -> None:
        pending: list[asyncio.Future[Any]] = [*self._tasks, *self._fetches.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def fetch_profile(pool: DeribitPool, credentials: Credentials) -> Profile:
    """The account data of a key from Deribit; a refused key or an outage as an AppError."""
    try:
        async with pool.authenticated(credentials) as connection:
            result: dict[str, Any] = await connection.call(
                "private/get_account_summaries", {"extended": True}
            )
    except (InvalidCredentials, Unauthorized) as error:
        raise DeribitRefused(f"Deribit refused the key: {error.reason}") from None
    except (LoginOverLimit, TooManyRequests) as error:  # the account is throttled for now
        raise TooMany(
            f"Deribit refused the sign-in for now: {error.reason} ({error.code}); try later",
            code="login_over_limit" if isinstance(error, LoginOverLimit) else "deribit_busy",
            # Deribit documents no wait for either; its credits refill within a second, its
            # failed-login count is unknown: a minute is what a client should give it.
            retry_after=60 if isinstance(error, LoginOverLimit) else 1,
        ) from None
    except DeribitForbidden as error:
        raise Forbidden(
            f"Deribit refused the key: {error.reason}", code="deribit_forbidden"
        ) from None
    except DeribitTransportError as error:
        raise Unavailable(f"Deribit is unreachable: {error}", code="deribit_unreachable") from None
    except DeribitError as error:
        raise Unavailable(
            f"Deribit could not answer: {error.reason} ({error.code})", code="deribit_refused"
        ) from None
    return Profile.from_summaries(result, datetime.now(UTC))
