"""Bodies of the session and user routes."""

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.config import JsonDict

USER_ID_PATTERN = r"^[A-Za-z0-9_.@-]{1,64}$"
MAX_CLIENT_ID = 128
MAX_SECRET = 256


class SessionCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "example": {
                "user_id": "alice",
                "client_id": "sim-alice",
                "client_secret": "sim-alice-secret",
            }
        },
    )

    user_id: str = Field(pattern=USER_ID_PATTERN, description="Your id in this service.")
    client_id: str = Field(
        min_length=1, max_length=MAX_CLIENT_ID, description="Deribit API key Client Id."
    )
    client_secret: SecretStr = Field(
        min_length=1, max_length=MAX_SECRET, description="Deribit API key Client Secret."
    )


class Balance(BaseModel):
    balance: float | None = None
    equity: float | None = None
    available_funds: float | None = None
    margin_balance: float | None = None


PROFILE_EXAMPLE: JsonDict = {
    "account_id": 1001,
    "username": "alice",
    "email": "alice@example.com",
    "type": "main",
    "balances": {
        "BTC": {"balance": 1.5, "equity": 1.52, "available_funds": 1.4, "margin_balance": 1.52}
    },
    "fetched_at": "2026-11-24T07:00:00Z",
}


class Profile(BaseModel):
    model_config = ConfigDict(json_schema_extra={"example": PROFILE_EXAMPLE})

    account_id: int = Field(description="Deribit account id.")
    username: str | None = None
    email: str | None = None
    type: str | None = Field(None, description="main or subaccount.")
    balances: dict[str, Balance] = Field(default_factory=dict, description="Per currency.")
    fetched_at: dt.datetime = Field(description="When this was fetched from Deribit (UTC).")

    @classmethod
    def from_summaries(cls, result: dict[str, Any], fetched_at: dt.datetime) -> "Profile":
        """From `private/get_account_summaries` with `extended=true`."""
        balances = {
            str(summary.get("currency", "?")).upper(): Balance.model_validate(summary)
            for summary in result.get("summaries") or []
            if isinstance(summary, dict)
        }
        return cls(
            account_id=int(result["id"]),
            username=result.get("username"),
            email=result.get("email"),
            type=result.get("type"),
            balances=balances,
            fetched_at=fetched_at,
        )


class SessionCreated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "user_id": "alice",
                "token": "Px16kp5sZ0b3xQm9Yw2Lr8TnVf4GhJ1cDe7UaKi6oBs",
                "expires_at": "2026-11-25T10:00:00Z",
                "profile": PROFILE_EXAMPLE,
            }
        }
    )

    user_id: str
    token: str = Field(
        description="Send as `Authorization: Bearer <token>` (also set as a cookie)."
    )
    expires_at: dt.datetime = Field(description="When the session ends (UTC).")
    profile: Profile


class UserOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {"user_id": "alice", "client_id": "sim-alice", "profile": PROFILE_EXAMPLE}
        }
    )

    user_id: str
    client_id: str = Field(description="The Deribit Client Id this user signed in with.")
    profile: Profile | None = Field(description="Deribit account data, cached up to 27 hours.")
