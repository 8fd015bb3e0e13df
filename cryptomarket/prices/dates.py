"""Dates of the history API (SPEC section 4): the seed's format and ISO 8601, always UTC."""

import re
from datetime import UTC, datetime, timedelta

# The original format, with single-digit parts allowed: 2024-5-1_9:05:00.
# ASCII digits only: `\d` alone would take digits of any script (Arabic-Indic, say).
SEED_FORMAT = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})_(\d{1,2}):(\d{1,2}):(\d{1,2})", re.ASCII)
EXAMPLES = "YYYY-MM-DD_HH:MM:SS (2024-05-01_09:30:00) or ISO 8601 (2024-05-01T09:30:00Z)"
MAX_LENGTH = 64
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MILLISECOND = timedelta(milliseconds=1)
# An unencoded "+03:00" in a query string arrives as " 03:00": read it as the offset it was.
SPACED_OFFSET = re.compile(r"([T ][\d:.]+) (\d{2}(?::?\d{2})?)$", re.ASCII)


class InvalidDate(ValueError):
    """A date parameter that cannot be read; the message is a sentence for the client."""


def parse_datetime(value: str, *, name: str = "date") -> datetime:
    """Read a date in either accepted format; a value without an offset is UTC."""
    text = value.strip()
    if not text or len(text) > MAX_LENGTH:
        raise InvalidDate(f"{name} must be a date: {EXAMPLES}")
    seed = SEED_FORMAT.fullmatch(text)
    try:
        if seed:
            year, month, day, hour, minute, second = (int(part) for part in seed.groups())
            moment = datetime(year, month, day, hour, minute, second)  # UTC below
        else:
            moment = datetime.fromisoformat(SPACED_OFFSET.sub(r"\1+\2", text.replace("z", "Z")))
    except ValueError as error:
        reason = str(error) if seed else f"use {EXAMPLES}"
        raise InvalidDate(f"{name} {text!r} is not a valid date: {reason}") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidDate(f"{name} {text!r} is out of range") from None


def to_ms(moment: datetime, *, up: bool = False) -> int:
    """Milliseconds since the epoch, the unit of Deribit's timestamps, in whole numbers (a float
    product is a millisecond off for some dates); a part of a millisecond goes down, or `up` (a
    range's start: no tick before it)."""
    whole, part = divmod(moment - EPOCH, MILLISECOND)
    return whole + (1 if up and part else 0)


def from_ms(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp / 1000, UTC)
