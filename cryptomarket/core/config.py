"""Settings, read once from the environment or `.env` (SPEC section 3)."""

import base64
import binascii
import re
from datetime import timedelta
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MAX_SESSION_TTL = timedelta(days=365)  # a session is a sign-in, not a key
TICKER_PATTERN = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)+$")

CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SettingsError(Exception):
    """A setting has a bad value; the message is one line naming it."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=True
    )

    DEBUG: bool = True
    PROJECT_MODE: Literal["testing", "development", "production"] = "development"

    DATABASE_URL: str | None = None
    POSTGRES_HOST: str = "127.0.0.1"
    POSTGRES_PORT: int = Field(5432, ge=1, le=65535)
    POSTGRES_USER: str = "cryptomarket"
    POSTGRES_PASSWORD: SecretStr = SecretStr("")
    POSTGRES_DB: str = "cryptomarket"
    REDIS_URL: str | None = None

    APP_HOST: str = "127.0.0.1"
    APP_PORT: int = Field(8003, ge=1, le=65535)

    DERIBIT_WS_URL: str = "wss://test.deribit.com/ws/api/v2"
    # Deribit allows 32 connections per IP; the pool stays below that with room for ingest.
    DERIBIT_POOL_SIZE: int = Field(10, ge=1, le=30)
    # Distributed mode: the sockets the whole deployment may hold (Deribit refuses the 33rd),
    # shared out between its processes in Redis; a little below 32 leaves room for a client
    # run by hand from the same address.
    DERIBIT_MAX_CONNECTIONS: int = Field(28, ge=2, le=32)
    DERIBIT_HEARTBEAT_INTERVAL: int = Field(10, ge=1, le=3600)
    DERIBIT_REQUEST_TIMEOUT: float = Field(10.0, gt=0, le=300)
    TRACKED_TICKERS: CommaList = Field(default_factory=lambda: ["btc_usd", "eth_usd"])

    ENCRYPTION_KEYS: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    CORS_ORIGINS: CommaList = Field(default_factory=list)
    SSE_MAX_STREAMS_PER_USER: int = Field(5, ge=1, le=1000)
    # Across every user id of one Deribit account (it may claim MAX_USER_IDS_PER_ACCOUNT), per
    # process: exact here, per replica in distributed mode.
    SSE_MAX_STREAMS_PER_ACCOUNT: int = Field(10, ge=1, le=1_000_000)
    SSE_MAX_STREAMS: int = Field(10_000, ge=1, le=1_000_000)
    # Stream opens per user id (each reads the store, a replay perhaps): a burst, then per minute.
    SSE_OPEN_BURST: int = Field(20, ge=1, le=100_000)
    SSE_OPENS_PER_MINUTE: float = Field(60.0, gt=0, le=1_000_000)
    # Frames a stream may have waiting; a client further behind is dropped.
    SSE_CLIENT_BUFFER: int = Field(2_000, ge=10, le=1_000_000)
    SESSION_TTL: timedelta = timedelta(hours=27)
    # An instrument updates up to ten times a second; its stored history keeps the first update
    # of every this many ms (0: every update). Streams get every update either way.
    INSTRUMENT_STORE_INTERVAL_MS: int = Field(1_000, ge=0, le=3_600_000)
    # Sign-in attempts per client address (every one costs a Deribit connection): a burst, then
    # this many a minute. User ids one Deribit account may claim.
    SIGN_IN_BURST: int = Field(5, ge=1, le=10_000)
    SIGN_INS_PER_MINUTE: float = Field(10.0, gt=0, le=100_000)
    MAX_USER_IDS_PER_ACCOUNT: int = Field(5, ge=1, le=10_000)
    # Tickers one user id may subscribe at once: each instrument is an upstream channel of ten
    # updates a second, so one user must not be able to take every one Deribit lists.
    MAX_SUBSCRIPTIONS_PER_USER: int = Field(100, ge=1, le=100_000)
    # Public price history per client address, in units (a request, plus one per 1000 rows of
    # its page; a CSV export 20): a burst, then per minute.
    HISTORY_BURST: int = Field(120, ge=20, le=1_000_000)
    HISTORY_PER_MINUTE: float = Field(1_200, gt=0, le=100_000_000)
    # Seconds between checks of open streams' sessions: an expired or signed-out one ends.
    SSE_SESSION_RECHECK: float = Field(30.0, ge=0.1, le=3600)
    HISTORY_RETENTION_DAYS: int | None = Field(None, ge=1)
    # Periodic jobs: seconds between runs of the persist job (distributed mode) and of the gap
    # backfill (both modes). The other jobs run hourly or every 15 minutes.
    JOBS_PERSIST_INTERVAL: float = Field(1.0, ge=0.1, le=3600)
    JOBS_GAP_INTERVAL: float = Field(60.0, ge=0.5, le=86_400)

    # False: no /docs, /redoc or /openapi.json (e.g. in production).
    DOCS_ENABLED: bool = True

    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    LOG_JSON: bool = False

    _split = field_validator("TRACKED_TICKERS", "CORS_ORIGINS", "ENCRYPTION_KEYS", mode="before")(
        _split_commas
    )

    @field_validator("HISTORY_RETENTION_DAYS", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("DATABASE_URL", "REDIS_URL", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("DATABASE_URL")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("must be a sqlite:// or postgresql:// SQLAlchemy URL")
        return value

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("DERIBIT_WS_URL")
    @classmethod
    def _ws_url(cls, value: str) -> str:
        if not re.match(r"^wss?://[^/\s]+", value):
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("TRACKED_TICKERS")
    @classmethod
    def _tickers(cls, value: list[str]) -> list[str]:
        bad = [ticker for ticker in value if not TICKER_PATTERN.fullmatch(ticker)]
        if bad:
            raise ValueError(f"not an index name: {', '.join(bad)} (expected e.g. btc_usd)")
        return list(dict.fromkeys(value))

    @field_validator("CORS_ORIGINS")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        bad = [o for o in value if o != "*" and not re.match(r"^https?://[^/\s]+$", o)]
        if bad:
            raise ValueError(f"not an origin: {', '.join(bad)} (expected e.g. https://app.example)")
        return value

    @field_validator("ENCRYPTION_KEYS")
    @classmethod
    def _fernet_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for position, key in enumerate(value, start=1):
            try:
                raw = base64.urlsafe_b64decode(key.get_secret_value().encode())
            except (binascii.Error, ValueError):
                raw = b""
            if len(raw) != 32:
                raise ValueError(f"key {position} is not a Fernet key (32 url-safe base64 bytes)")
        return value

    @field_validator("SESSION_TTL", mode="before")
    @classmethod
    def _seconds(cls, value: object) -> object:
        if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
            return float(value)
        return value

    @field_validator("SESSION_TTL")
    @classmethod
    def _positive_ttl(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a positive duration")
        if value > MAX_SESSION_TTL:
            raise ValueError(f"must be at most {MAX_SESSION_TTL.days} days")
        return value

    @model_validator(mode="after")
    def _keys_outside_debug(self) -> "Settings":
        if not self.DEBUG and not self.ENCRYPTION_KEYS:
            raise ValueError("ENCRYPTION_KEYS is required when DEBUG is false")
        if self.DERIBIT_HEARTBEAT_INTERVAL < 10 and self.PROJECT_MODE != "testing":
            raise ValueError(
                "DERIBIT_HEARTBEAT_INTERVAL must be at least 10 (Deribit's minimum; "
                "shorter intervals are for PROJECT_MODE=testing against the simulator)"
            )
        return self

    @property
    def distributed(self) -> bool:
        """Redis set means distributed mode (SPEC section 2)."""
        return self.REDIS_URL is not None


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        name = ".".join(str(part) for part in item["loc"]) or "settings"
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{name}: {message}")
    return "invalid setting " + "; ".join(parts)


def load_settings() -> Settings:
    """Read and validate the settings; a bad value raises SettingsError with one line naming it."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
