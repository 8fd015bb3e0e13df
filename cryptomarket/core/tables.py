"""The database tables, named per SPEC section 2.

SQLite has no schemas, so its tables carry the prefix `crypto_`; PostgreSQL keeps them in the
schema `crypto`. The tables are built once per dialect and handed to the repositories.
"""

from dataclasses import dataclass
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.types import JSON

SCHEMA = "crypto"
SQLITE_PREFIX = "crypto_"


def table_name(name: str, dialect: str) -> tuple[str, str | None]:
    """(name, schema) of a table on a dialect."""
    if dialect == "postgresql":
        return name, SCHEMA
    return SQLITE_PREFIX + name, None


@dataclass(frozen=True)
class Tables:
    metadata: MetaData
    person: Table
    person_prices: Table
    price_tickers: Table
    price_gaps: Table
    sessions: Table
    price_candles: Table
    instrument_ticks: Table


@cache
def build_tables(dialect: str) -> Tables:
    metadata = MetaData()

    def table(name: str, *items: Any, **options: Any) -> Table:
        real_name, schema = table_name(name, dialect)
        return Table(real_name, metadata, *items, schema=schema, **options)

    person_name, person_schema = table_name("person", dialect)
    person_key = (
        f"{person_schema}.{person_name}.user_id" if person_schema else f"{person_name}.user_id"
    )

    person = table(
        "person",
        Column("user_id", String(64), primary_key=True),
        Column("client_id", String(128), nullable=False),
        # Fernet token of the client secret under ENCRYPTION_KEYS; never the plaintext.
        Column("client_secret_encrypted", LargeBinary, nullable=False),
        Column("deribit_account_id", BigInteger, nullable=True),
        Column("profile", JSON, nullable=True),
        # When the profile was last fetched or tried (jobs/profiles.py orders refreshes by it).
        Column("profile_fetched_at", DateTime(timezone=True), nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )
    person_prices = table(
        "person_prices",
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("user_id", String(64), ForeignKey(person_key, ondelete="CASCADE"), nullable=False),
        Column("ticker", String(64), nullable=False),
        # Seconds between prices; NULL: the stream's own ?timer= (else 60) applies.
        Column("timer", Integer, nullable=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("user_id", "ticker", name="uq_person_prices_user_ticker"),
    )
    # One row per Deribit tick. The primary key (ticker, timestamp) is both the idempotency key
    # and the index every history query walks.
    price_tickers = table(
        "price_tickers",
        Column("ticker", String(64), nullable=False),
        Column("timestamp", BigInteger, nullable=False),  # Deribit's, ms
        Column("price", Double, nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("ticker", "timestamp", name="pk_price_tickers"),
        sqlite_with_rowid=False,
    )
    # One row per stored instrument ticker update (at most one per INSTRUMENT_STORE_INTERVAL_MS
    # per instrument): the columns of price_tickers, `price` being the mark price, so the same
    # queries serve both kinds, and the fields of the instrument's kind (instruments/frames.py).
    instrument_ticks = table(
        "instrument_ticks",
        Column("ticker", String(64), nullable=False),
        Column("timestamp", BigInteger, nullable=False),  # Deribit's, ms
        Column("price", Double, nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        Column("fields", JSON, nullable=False),
        PrimaryKeyConstraint("ticker", "timestamp", name="pk_instrument_ticks"),
        sqlite_with_rowid=False,
    )
    # Time ranges in which ticks were missed and could not be filled (either kind).
    price_gaps = table(
        "price_gaps",
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("ticker", String(64), nullable=False),
        Column("from_ts", BigInteger, nullable=False),
        Column("to_ts", BigInteger, nullable=False),
        Column("reason", String(200), nullable=False),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        UniqueConstraint("ticker", "from_ts", name="uq_price_gaps_ticker_from"),
    )
    # Candles kept beside the ticks (prices/rollups.py): one row per ticker, bucket width (a
    # minute or an hour, in ms) and bucket start. open_ts and close_ts are the timestamps of the
    # first and last tick in the bucket, so candles of ticks stored apart merge in any order.
    price_candles = table(
        "price_candles",
        Column("ticker", String(64), nullable=False),
        Column("width", Integer, nullable=False),
        Column("start", BigInteger, nullable=False),
        Column("open_ts", BigInteger, nullable=False),
        Column("open", Double, nullable=False),
        Column("high", Double, nullable=False),
        Column("low", Double, nullable=False),
        Column("close_ts", BigInteger, nullable=False),
        Column("close", Double, nullable=False),
        Column("count", Integer, nullable=False),
        PrimaryKeyConstraint("ticker", "width", "start", name="pk_price_candles"),
        sqlite_with_rowid=False,
    )
    # Session tokens are stored only as their SHA-256; the token itself lives with the client.
    sessions = table(
        "sessions",
        Column("token_hash", String(64), primary_key=True),
        Column("user_id", String(64), ForeignKey(person_key, ondelete="CASCADE"), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        Column("revoked_at", DateTime(timezone=True), nullable=True),
    )
    return Tables(
        metadata,
        person,
        person_prices,
        price_tickers,
        price_gaps,
        sessions,
        price_candles,
        instrument_ticks,
    )
