from datetime import UTC, datetime, timedelta, timezone

import pytest

from cryptomarket.prices.dates import InvalidDate, parse_datetime


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
