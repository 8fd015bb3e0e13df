"""What a backfill window gets from history points, with the spacing read from the points."""

from cryptomarket.deribit.errors import DeribitTransportError
from cryptomarket.prices.backfill import (
    FAILED_PREFIX,
    HISTORY_CHECKED,
    cover,
    fill_window,
    parse_points,
    spacing_of,
)
from cryptomarket.prices.models import Gap, Tick

T = "btc_usd"


def points(*stamps: int) -> list[Tick]:
    return [Tick(T, 100.0 + i, ts) for i, ts in enumerate(stamps)]


def test_minute_points_never_fill_a_short_outage_and_say_so():
    # Deribit-like: a point a minute; a 15 s outage between 10_000 and 25_000 has none of them.
    history = points(*range(-600_000, 60_001, 60_000))
    result = cover(T, history, 10_000, 25_000, "1h")
    assert result.ticks == [] and result.spacing_ms == 60_000
    [gap] = result.gaps
    assert (gap.from_ts, gap.to_ts) == (10_001, 24_999)
    assert gap.reason.startswith(HISTORY_CHECKED)
    assert "0 point(s)" in gap.reason and "60 s apart" in gap.reason


def test_a_coarse_point_inside_the_window_does_not_fill_it():
    history = points(0, 60_000, 120_000)
    result = cover(T, history, 50_000, 70_000, "1h")
    assert result.ticks == [] and result.coarse == 1
    assert [(g.from_ts, g.to_ts) for g in result.gaps] == [(50_001, 69_999)]


def test_live_resolution_points_fill_the_window_and_only_holes_are_gaps():
    stamps = [*range(0, 20_001, 1_000), *range(30_000, 40_001, 1_000)]  # no point 20..30 s
    result = cover(T, points(*stamps), 5_000, 38_500, "1h")
    assert [t.timestamp for t in result.ticks] == [ts for ts in stamps if 5_000 < ts < 38_500]
    [gap] = result.gaps
    assert (gap.from_ts, gap.to_ts) == (20_001, 29_999)
    assert "1 s apart" in gap.reason and "10 s" in gap.reason


def test_the_window_edges_count_as_holes_too():
    # History stops 5 s before the window ends (and starts well inside it).
    result = cover(T, points(*range(10_000, 20_001, 500)), 0, 25_000, "1h")
    assert [(g.from_ts, g.to_ts) for g in result.gaps] == [(1, 9_999), (20_001, 24_999)]


def test_history_much_coarser_than_the_live_ticks_is_not_live_resolution():
    history = points(*range(0, 60_001, 1_000))  # one a second, but live ticks come every 50 ms
    result = cover(T, history, 10_000, 20_000, "1h", live_spacing_ms=50)
    assert result.ticks == [] and [(g.from_ts, g.to_ts) for g in result.gaps] == [(10_001, 19_999)]
    assert cover(T, history, 10_000, 20_000, "1h", live_spacing_ms=900).gaps == []


def test_spacing_is_read_where_the_window_is():
    # Fine near now, coarse further back: a recent window is filled, an old one is not.
    history = points(*range(0, 600_001, 60_000), *range(601_000, 700_001, 1_000))
    recent = cover(T, history, 650_000, 660_000, "1h")
    assert recent.gaps == [] and len(recent.ticks) == 9
    old = cover(T, history, 100_000, 110_000, "1h")
    assert old.ticks == [] and len(old.gaps) == 1


def test_no_points_or_one_point_is_unknown_spacing_and_a_gap():
    for history in ([], points(12_000)):
        result = cover(T, history, 10_000, 20_000, "1h")
        assert [(g.from_ts, g.to_ts) for g in result.gaps] == [(10_001, 19_999)]
        assert "unknown spacing" in result.gaps[0].reason
    assert cover(T, [], 10_000, 10_001, "1h").gaps == []  # no ms strictly between


def test_points_are_parsed_sorted_and_deduplicated():
    raw = [[3000, 1.5], [1000, "2"], ["x", 1], [2000], [1000, 9.0], [4000, float("nan")], None]
    assert [(t.timestamp, t.price) for t in parse_points(T, raw)] == [(1000, 9.0), (3000, 1.5)]
    assert spacing_of(points(0, 10, 30, 60)) == 20


async def test_a_history_failure_is_a_gap_to_retry():
    async def broken(ticker: str, range_name: str) -> list:
        raise DeribitTransportError("connection lost")

    result = await fill_window(broken, T, 1_000, 5_000)
    assert result.gaps == [Gap(T, 1_001, 4_999, f"{FAILED_PREFIX}: connection lost")]
