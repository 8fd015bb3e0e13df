"""Access and refresh tokens issued by `public/auth`, with Deribit's binding rules (reference §3.3).

A `connection`-scoped grant is valid only on the socket that obtained it and dies with it; a
`session:<name>` grant is valid on any socket, and each API key may hold 16 named sessions.
"""

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptomarket.deribit.simulator.accounts import Account

MAX_SESSIONS_PER_KEY = 16
SIGNATURE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Grant:
    account: Account
    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    scope: str
    expires_in: int
    expires_at: float  # clock time
    connection_id: int | None  # set for connection scope only
    session_name: str | None

    def result(self) -> dict[str, Any]:
        """The `public/auth` result."""
        return {
            "access_token": self.access_token,
            "token_type": "bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
            "enabled_features": [],
        }


class TooManySessions(Exception):
    pass


def _new_token() -> str:
    # Deribit's shape: "<ms>.<8 chars>.<blob>".
    return f"{time.time_ns() // 1_000_000}.{secrets.token_hex(4)}.{secrets.token_urlsafe(24)}"


class TokenStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._by_access: dict[str, Grant] = {}
        self._by_refresh: dict[str, Grant] = {}

    def issue(
        self,
        account: Account,
        *,
        scope: str,
        expires_in: int,
        connection_id: int,
        session_name: str | None,
    ) -> Grant:
        """A new grant; `connection_id` binds it unless it is a named session's."""
        self._purge()
        if session_name is not None:
            sessions = {
                g.session_name
                for g in self._by_access.values()
                if g.account.client_id == account.client_id and g.session_name is not None
            }
            if session_name not in sessions and len(sessions) >= MAX_SESSIONS_PER_KEY:
                raise TooManySessions
        grant = Grant(
            account=account,
            access_token=_new_token(),
            refresh_token=_new_token(),
            scope=scope,
            expires_in=expires_in,
            expires_at=self._clock() + expires_in,
            connection_id=None if session_name is not None else connection_id,
            session_name=session_name,
        )
        self._by_access[grant.access_token] = grant
        self._by_refresh[grant.refresh_token] = grant
        return grant

    def by_access(self, token: str, connection_id: int) -> Grant | None:
        """The grant of a live access token usable on this connection, else None."""
        return self._usable(self._by_access.get(token), connection_id)

    def refresh(self, token: str, connection_id: int) -> Grant | None:
        """Replace the grant of a refresh token with a new pair; None when it is not usable."""
        old = self._usable(self._by_refresh.get(token), connection_id)
        if old is None:
            return None
        self.revoke(old)
        return self.issue(
            old.account,
            scope=old.scope,
            expires_in=old.expires_in,
            connection_id=connection_id,
            session_name=old.session_name,
        )

    def revoke(self, grant: Grant) -> None:
        self._by_access.pop(grant.access_token, None)
        self._by_refresh.pop(grant.refresh_token, None)

    def revoke_session(self, grant: Grant) -> None:
        """Revoke the grant and, for a named session, every grant of that session."""
        self.revoke(grant)
        if grant.session_name is not None:
            for other in list(self._by_access.values()):
                if (other.account.client_id, other.session_name) == (
                    grant.account.client_id,
                    grant.session_name,
                ):
                    self.revoke(other)

    def drop_connection(self, connection_id: int) -> None:
        """The socket closed: its connection-scoped grants die with it."""
        for grant in list(self._by_access.values()):
            if grant.connection_id == connection_id:
                self.revoke(grant)

    def _usable(self, grant: Grant | None, connection_id: int) -> Grant | None:
        if grant is None or grant.connection_id not in (None, connection_id):
            return None
        if grant.expires_at <= self._clock():
            self.revoke(grant)
            return None
        return grant

    def _purge(self) -> None:
        now = self._clock()
        for grant in [g for g in self._by_access.values() if g.expires_at <= now]:
            self.revoke(grant)


class NonceRegistry:
    """Signed auth requests are single-use: each nonce (or signature) is accepted once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], float] = {}

    def use(self, client_id: str, nonce: str, signature: str) -> bool:
        """Record the request; False if it was seen inside the signature window."""
        now = self._clock()
        # A request outside the window is rejected by its timestamp, so old entries can go.
        for key in [k for k, seen in self._seen.items() if seen < now - 2 * SIGNATURE_WINDOW_S]:
            del self._seen[key]
        keys = [(client_id, "sig:" + signature)] + (
            [(client_id, "nonce:" + nonce)] if nonce else []
        )
        if any(key in self._seen for key in keys):
            return False
        for key in keys:
            self._seen[key] = now
        return True
