"""Properties of the date parser: both formats round-trip to the same instant in UTC, and any
other text is an InvalidDate (a 422 with a sentence), never another exception."""

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptomarket.core.errors import InvalidInput
from cryptomarket.prices.dates import InvalidDate, parse_datetime, to_ms
from cryptomarket.prices.service import parse_range

moments = st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 31))
offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


def part(value: int, short: bool) -> str:
    """A date part as the seed wrote it: zero-padded, or its single digit when it has one."""
    return str(value) if short else f"{value:02d}"


@given(moment=moments, shorts=st.lists(st.booleans(), min_size=5, max_size=5))
def test_the_seed_format_round_trips_with_or_without_padding(
    moment: datetime, shorts: list[bool]
) -> None:
    moment = moment.replace(microsecond=0)
    month, day, hour, minute, second = (
        part(value, short)
        for value, short in zip(
            (moment.month, moment.day, moment.hour, moment.minute, moment.second),
            shorts,
            strict=True,
        )
    )
    text = f"{moment.year:04d}-{month}-{day}_{hour}:{minute}:{second}"
    parsed = parse_datetime(text)
    assert parsed == moment.replace(tzinfo=UTC)
    assert parsed.utcoffset() == timedelta(0)


@given(moment=moments, offset=offsets, zulu=st.booleans())
def test_iso_8601_round_trips_to_the_same_instant(
    moment: datetime, offset: timezone, zulu: bool
) -> None:
    naive = parse_datetime(moment.isoformat())  # no offset: UTC
    assert naive == moment.replace(tzinfo=UTC)
    aware = moment.replace(tzinfo=UTC if zulu else offset)
    text = aware.isoformat().replace("+00:00", "Z") if zulu else aware.isoformat()
    try:
        parsed = parse_datetime(text)
    except InvalidDate as refused:  # only where the instant falls outside years 1-9999 in UTC
        with pytest.raises(OverflowError):
            aware.astimezone(UTC)
        assert "out of range" in str(refused)
        return
    assert parsed == aware
    assert parsed.utcoffset() == timedelta(0)
    assert to_ms(parsed) == to_ms(aware)


@given(moment=moments, offset=offsets)
def test_an_unencoded_plus_read_as_a_space_keeps_the_offset(
    moment: datetime, offset: timezone
) -> None:
    aware = moment.replace(tzinfo=offset, microsecond=0)
    text = aware.isoformat()
    if "+" not in text:
        return
    try:
        expected = aware.astimezone(UTC)
    except OverflowError:
        return
    assert parse_datetime(text.replace("+", " ")) == expected


hostile_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Nd", "P", "Zs", "Cc"])),
    st.text(alphabet="0123456789-_:T.Z+ zW", max_size=40),
    st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=4),
    st.from_regex(r"\d{4}-\d{1,3}-\d{1,3}_\d{1,3}:\d{1,3}:\d{1,3}", fullmatch=True),
)


@given(text=hostile_text)
def test_any_text_is_a_utc_date_or_an_invalid_date(text: str) -> None:
    try:
        parsed = parse_datetime(text, name="start_date")
    except InvalidDate as refused:
        assert str(refused).startswith("start_date")  # a sentence naming the parameter
        return
    assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)
    assert text.strip().isascii()  # digits of other scripts are not dates
    to_ms(parsed)


@given(start=hostile_text, end=st.none() | hostile_text)
def test_a_range_of_any_text_is_two_dates_or_invalid_input(start: str, end: str | None) -> None:
    try:
        first, last = parse_range(start, end)
    except InvalidInput as refused:
        assert refused.status_code == 422
        assert refused.code in ("invalid_date", "invalid_date_range")
        return
    assert first <= last


def test_digits_of_other_scripts_are_refused() -> None:
    with pytest.raises(InvalidDate):
        parse_datetime(
            "\u0662\u0660\u0662\u0664-\u0665-\u0661_\u0669:\u0665:\u0667"
        )  # Arabic-Indic
