"""Every query of people, their sessions and their subscriptions. Callers own the transaction."""

import enum
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Executable, Row, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from cryptomarket.core.tables import Tables

ACCOUNT_LOCK_SPACE = 0x434D  # "CM": this service's advisory locks of Deribit accounts


class Claimed(enum.Enum):
    NEW = "new"  # the user id was free and is now the account's
    AGAIN = "again"  # the account already owned it
    TAKEN = "taken"  # another Deribit account owns it


class Owner(NamedTuple):
    """Who a session or key belongs to: the user id and its Deribit account (None: a row from
    before accounts were stored), read in the same query so a stream open costs no extra one."""

    user_id: str
    account_id: int | None


def purge_sessions_statement(tables: Tables, now: datetime) -> Executable:
    """Forget sessions that expired or were revoked."""
    sessions = tables.sessions
    return delete(sessions).where(
        (sessions.c.expires_at <= now) | sessions.c.revoked_at.is_not(None)
    )


class UserRepository:
    def __init__(self, connection: AsyncConnection, tables: Tables) -> None:
        self.connection = connection
        self.tables = tables
        self.person = tables.person
        self.sessions = tables.sessions
        self.subscriptions = tables.person_prices
        self._insert = (
            postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        )

    # -- people -----------------------------------------------------------------------------

    async def get(self, user_id: str) -> Row[Any] | None:
        result = await self.connection.execute(
            select(self.person).where(self.person.c.user_id == user_id)
        )
        return result.first()

    async def claim(
        self,
        user_id: str,
        *,
        client_id: str,
        secret: bytes,
        account_id: int,
        profile: dict[str, Any],
        now: datetime,
    ) -> Claimed:
        """Create the user, or update it if the same Deribit account owns it; one statement, so
        two first sign-ins racing for one id cannot both win."""
        values = {
            "client_id": client_id,
            "client_secret_encrypted": secret,
            "deribit_account_id": account_id,
            "profile": profile,
            "profile_fetched_at": now,
            "updated_at": now,
        }
        statement = self._insert(self.person).values(user_id=user_id, created_at=now, **values)
        upsert = statement.on_conflict_do_update(
            index_elements=["user_id"],
            set_=values,
            where=self.person.c.deribit_account_id == statement.excluded.deribit_account_id,
        ).returning(self.person.c.created_at, self.person.c.updated_at)
        row = (await self.connection.execute(upsert)).first()
        if row is None:
            return Claimed.TAKEN
        # A new row has both set to `now`; an updated one keeps its first created_at.
        return Claimed.NEW if row.created_at == row.updated_at else Claimed.AGAIN

    async def lock_account(self, account_id: int) -> None:
        """Serialise the sign-ins of one Deribit account until the transaction ends, so two
        new user ids racing cannot both pass the per-account limit. PostgreSQL: an advisory
        lock; SQLite serialises every writer already (the claim is the transaction's first
        statement and takes the write lock)."""
        if self.connection.dialect.name == "postgresql":
            key = (ACCOUNT_LOCK_SPACE << 32) | (account_id & 0xFFFFFFFF)
            await self.connection.execute(select(func.pg_advisory_xact_lock(key)))

    async def user_ids_of_account(self, account_id: int) -> list[str]:
        result = await self.connection.execute(
            select(self.person.c.user_id)
            .where(self.person.c.deribit_account_id == account_id)
            .order_by(self.person.c.created_at, self.person.c.user_id)
        )
        return list(result.scalars())

    async def set_profile(
        self, user_id: str, profile: dict[str, Any], now: datetime, *, fetched_with: bytes
    ) -> bool:
        """Store a profile fetched with the key `fetched_with` (its stored secret), unless a
        sign-in stored another key meanwhile (its own profile is newer); whether it was."""
        result = await self.connection.execute(
            update(self.person)
            .where(
                self.person.c.user_id == user_id,
                self.person.c.client_secret_encrypted == fetched_with,
            )
            .values(profile=profile, profile_fetched_at=now)
        )
        return bool(result.rowcount)

    async def replace_secret(self, user_id: str, old: bytes, new: bytes) -> None:
        """Store `new` (the same secret under the newest key) only if `old` is still stored: a
        sign-in that stored another secret meanwhile wins."""
        await self.connection.execute(
            update(self.person)
            .where(self.person.c.user_id == user_id)
            .where(self.person.c.client_secret_encrypted == old)
            .values(client_secret_encrypted=new)
        )

    # -- sessions ---------------------------------------------------------------------------

    async def add_session(
        self, token_hash: str, user_id: str, *, now: datetime, expires_at: datetime
    ) -> None:
        await self.connection.execute(
            self.sessions.insert().values(
                token_hash=token_hash, user_id=user_id, created_at=now, expires_at=expires_at
            )
        )

    async def session_owners(self, token_hashes: list[str], now: datetime) -> dict[str, Owner]:
        """The users of those sessions that are live (not revoked, not expired), with their
        Deribit accounts, by token hash."""
        sessions, person = self.sessions, self.person
        result = await self.connection.execute(
            select(sessions.c.token_hash, sessions.c.user_id, person.c.deribit_account_id)
            .join(person, person.c.user_id == sessions.c.user_id)
            .where(
                sessions.c.token_hash.in_(token_hashes),
                sessions.c.revoked_at.is_(None),
                sessions.c.expires_at > now,
            )
        )
        return {row.token_hash: Owner(row.user_id, row.deribit_account_id) for row in result}

    async def revoke_session(self, token_hash: str, now: datetime) -> None:
        await self.connection.execute(
            update(self.sessions)
            .where(self.sessions.c.token_hash == token_hash)
            .values(revoked_at=now)
        )

    async def purge_sessions(self, now: datetime) -> int:
        """Forget sessions that expired or were revoked."""
        result = await self.connection.execute(purge_sessions_statement(self.tables, now))
        return int(result.rowcount)

    # -- subscriptions ----------------------------------------------------------------------

    async def subscriptions_of(self, user_id: str) -> dict[str, int | None]:
        return (await self.subscriptions_of_users([user_id])).get(user_id, {})

    async def subscriptions_of_users(self, user_ids: list[str]) -> dict[str, dict[str, int | None]]:
        """Each user's subscriptions (ticker -> own timer), by ticker; users with none are
        left out."""
        subscriptions = self.subscriptions
        result = await self.connection.execute(
            select(subscriptions.c.user_id, subscriptions.c.ticker, subscriptions.c.timer)
            .where(subscriptions.c.user_id.in_(user_ids))
            .order_by(subscriptions.c.user_id, subscriptions.c.ticker)
        )
        found: dict[str, dict[str, int | None]] = {}
        for user_id, ticker, timer in result.all():
            found.setdefault(user_id, {})[ticker] = timer
        return found

    async def lock_subscriptions(self, user_id: str) -> None:
        """Serialise the new subscriptions of one user until the transaction ends, so two racing
        cannot both pass the per-user limit. PostgreSQL: the user's row, locked; SQLite
        serialises every writer already (the insert is the transaction's first statement)."""
        if self.connection.dialect.name == "postgresql":
            user = select(self.person.c.user_id).where(self.person.c.user_id == user_id)
            await self.connection.execute(user.with_for_update())

    async def count_subscriptions(self, user_id: str) -> int:
        result = await self.connection.execute(
            select(func.count()).where(self.subscriptions.c.user_id == user_id)
        )
        return int(result.scalar_one())

    async def subscribe(
        self, user_id: str, ticker: str, timer: int | None, now: datetime
    ) -> tuple[bool, int | None]:
        """Add a subscription, or change its timer when one is given; (is new, timer now).
        Concurrent identical calls are safe: the insert yields to the one that got there."""
        inserted = await self.connection.execute(
            self._insert(self.subscriptions)
            .values(user_id=user_id, ticker=ticker, timer=timer, created_at=now)
            .on_conflict_do_nothing(index_elements=["user_id", "ticker"])
        )
        if inserted.rowcount:
            return True, timer
        where = (self.subscriptions.c.user_id == user_id) & (self.subscriptions.c.ticker == ticker)
        if timer is not None:
            await self.connection.execute(
                update(self.subscriptions).where(where).values(timer=timer)
            )
            return False, timer
        result = await self.connection.execute(select(self.subscriptions.c.timer).where(where))
        return False, result.scalar()

    async def unsubscribe(self, user_id: str, tickers: list[str] | None = None) -> list[str]:
        """Remove some (or all) of a user's subscriptions; returns the tickers this call removed.

        One DELETE ... RETURNING: of two concurrent calls removing the same row, only the one
        whose delete removed it names it, so only that one releases the upstream channel."""
        condition = self.subscriptions.c.user_id == user_id
        if tickers is not None:
            condition = condition & self.subscriptions.c.ticker.in_(tickers)
        result = await self.connection.execute(
            delete(self.subscriptions).where(condition).returning(self.subscriptions.c.ticker)
        )
        return sorted(result.scalars())

    async def end_ticker(self, ticker: str) -> list[str]:
        """Remove every subscription of a ticker (an expired instrument); returns whose."""
        result = await self.connection.execute(
            delete(self.subscriptions)
            .where(self.subscriptions.c.ticker == ticker)
            .returning(self.subscriptions.c.user_id)
        )
        return sorted(result.scalars())

    async def subscribed_tickers(self) -> dict[str, int]:
        """How many users subscribe each ticker."""
        result = await self.connection.execute(
            select(self.subscriptions.c.ticker, func.count()).group_by(self.subscriptions.c.ticker)
        )
        return {ticker: int(count) for ticker, count in result.all()}

    async def subscribers_of(self, ticker: str) -> int:
        """How many users subscribe `ticker`."""
        result = await self.connection.execute(
            select(func.count())
            .select_from(self.subscriptions)
            .where(self.subscriptions.c.ticker == ticker)
        )
        return int(result.scalar() or 0)
