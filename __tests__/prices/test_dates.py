from datetime import UTC, datetime, timedelta, timezone

import pytest

from cryptomarket.prices.dates import InvalidDate, parse_datetime, to_ms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01_09:30:00", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-5-1_9:5:7", datetime(2024, 5, 1, 9, 5, 7, tzinfo=UTC)),
        (" 2024-05-01_09:30:00 ", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-05-01T09:30:00", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-05-01T09:30:00Z", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-05-01T09:30:00.250Z", datetime(2024, 5, 1, 9, 30, 0, 250_000, tzinfo=UTC)),
        ("2024-05-01T12:30:00+03:00", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-05-01T04:30:00-05:00", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-05-01T12:30:00 03:00", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),  # "+" unencoded
        ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
        ("2024-05-01 09:30", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),
        ("2024-05-01 12:30:00 03:00", datetime(2024, 5, 1, 9, 30, tzinfo=UTC)),  # space, too
    ],
)
def test_accepted_forms_all_become_utc(text: str, expected: datetime) -> None:
    parsed = parse_datetime(text, name="start_date")
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_an_offset_is_honoured_not_dropped() -> None:
    local = datetime(2024, 1, 1, 0, 0, tzinfo=timezone(timedelta(hours=5)))
    assert parse_datetime(local.isoformat()) == datetime(2023, 12, 31, 19, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "must be a date"),
        ("yesterday", "is not a valid date: use YYYY-MM-DD_HH:MM:SS"),
        ("2024-13-01_00:00:00", "month must be in 1..12"),
        ("2024-02-30_00:00:00", "day is out of range for month"),
        ("2024-01-01_24:00:00", "hour must be in 0..23"),
        ("2024-01-01_10:61:00", "minute must be in 0..59"),
        ("2024/01/01", "is not a valid date"),
        ("01.02.2024 10:00", "is not a valid date"),
        ("1" * 65, "must be a date"),
        ("0001-01-01T00:00:00+01:00", "is out of range"),
        ("2024-01-01T10:00:00+25:00", "is not a valid date"),
    ],
)
def test_nonsense_is_one_sentence_naming_the_parameter(text: str, words: str) -> None:
    with pytest.raises(InvalidDate) as caught:
        parse_datetime(text, name="end_date")
    assert str(caught.value).startswith("end_date")
    assert words in str(caught.value)


def test_milliseconds_are_exact_and_a_start_within_one_rounds_up() -> None:
    # A float product of seconds is a millisecond low for some dates (2004, 2038): a range's
    # end would leave out a tick at exactly that millisecond.
    assert to_ms(parse_datetime("2004-04-12T04:40:05.949Z")) == 1_081_744_805_949
    assert to_ms(parse_datetime("2038-06-01T00:00:00.123Z")) == 2_158_963_200_123
    half_past = parse_datetime("2024-05-01T09:30:00.0005Z")
    assert to_ms(half_past) == 1_714_555_800_000  # an end: the tick at .000 is before it
    assert to_ms(half_past, up=True) == 1_714_555_800_001  # a start: the tick at .000 is not after
