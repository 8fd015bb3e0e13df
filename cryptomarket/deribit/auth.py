"""Deribit API-key authentication (reference section 3): grants, signatures and token lifetimes."""

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

GrantType = Literal["client_credentials", "client_signature"]

# Refresh when this share of the token's lifetime has passed (nautilus uses 80 %).
REFRESH_AT = 0.8


def client_signature(client_secret: str, timestamp_ms: int, nonce: str, data: str = "") -> str:
    """Lower-case hex HMAC-SHA256 of "timestamp\\nnonce\\ndata" keyed by the client secret."""
    message = f"{timestamp_ms}\n{nonce}\n{data}".encode()
    return hmac.new(client_secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Credentials:
    """A Deribit API key. The secret never leaves this object except inside an auth request."""

    client_id: str
    client_secret: str = field(repr=False)
    grant_type: GrantType = "client_credentials"
    scope: str | None = None

    def auth_params(self) -> dict[str, Any]:
        """Parameters of a `public/auth` call with this key."""
        params: dict[str, Any]
        if self.grant_type == "client_signature":
            timestamp = int(time.time() * 1000)
            nonce = secrets.token_hex(8)
            params = {
                "grant_type": "client_signature",
                "client_id": self.client_id,
                "timestamp": timestamp,
                "nonce": nonce,
                "data": "",
                "signature": client_signature(self.client_secret, timestamp, nonce),
            }
        else:
            params = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
            }
        if self.scope:
            params["scope"] = self.scope
        return params


@dataclass
class Token:
    """The answer of a successful `public/auth`."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_in: float
    scope: str
    issued_at: float  # loop time

    @classmethod
    def from_result(cls, result: dict[str, Any], issued_at: float) -> "Token":
        return cls(
            access_token=str(result["access_token"]),
            refresh_token=str(result.get("refresh_token", "")),
            expires_in=float(result.get("expires_in", 0)),
            scope=str(result.get("scope", "")),
            issued_at=issued_at,
        )

    @property
    def connection_bound(self) -> bool:
        """Default (`connection`) tokens die with their socket; `session:` tokens do not."""
        return not any(part.startswith("session:") for part in self.scope.split())

    @property
    def refresh_due(self) -> float:
        """Loop time at which to refresh."""
        return self.issued_at + self.expires_in * REFRESH_AT
