"""The chaos ledger's checks catch each kind of violation, exactly, and accept what is allowed."""

from bench.chaos import ledger
from bench.chaos.clients import Connection
from bench.chaos.faults import schedule

PRODUCED = {"btc_usd": [(1000 + 100 * i, 50_000.0 + i) for i in range(10)]}


def no_fault(ts: int) -> str:
    return "no fault"


def test_database_counts_lost_ticks_and_accepts_a_recorded_gap():
    ticks = PRODUCED["btc_usd"]
    rows = {"btc_usd": [t for t in ticks if t[0] not in (1300, 1400, 1800)]}
    gaps = [("btc_usd", 1750, 1850, "backfill at coarse spacing")]
    check = ledger.database(PRODUCED, rows, gaps, [], no_fault)
    assert not check.holds
    assert check.counts["lost"] == 2 and check.counts["in_gap"] == 1
    assert "btc_usd:1300..1400 (2, after no fault)" in check.details[0]


def test_database_allows_foreign_rows_only_inside_a_gap():
    ticks = PRODUCED["btc_usd"]
    coarse = [(1760, 50_007.5)]  # a chart point, not a produced tick
    wrong_price = [(1200, 1.0)]
    rows = {"btc_usd": [t for t in ticks if t[0] != 1200] + coarse + wrong_price}
    gaps = [("btc_usd", 1750, 1770, "coarse")]
    check = ledger.database(PRODUCED, rows, gaps, [], no_fault)
    assert check.counts["foreign_in_gap"] == 1
    assert check.counts["lost"] == 1 and check.counts["foreign"] == 1  # 1200 has a wrong price
    assert not check.holds


def test_database_names_losses_a_removed_gap_had_covered():
    rows = {"btc_usd": PRODUCED["btc_usd"][:5]}
    log = [("btc_usd", 1500, 1900, "recorded, then replaced by the gap backfill")]
    check = ledger.database(PRODUCED, rows, [], log, no_fault)
    assert check.counts["lost"] == 5
    assert any("later removed" in line for line in check.details)


def test_database_wants_the_first_update_of_each_window_of_an_instrument():
    """Five updates a second, one a second stored: the first of each second is due; a later one
    stored instead (its first missed with no gap) is a loss; an extra one of the window is fine."""
    ticks = [(1400 + 200 * i, 90_000.0 + i) for i in range(13)]  # 1400 .. 3800
    produced = {"BTC-PERPETUAL": ticks}
    first = [ticks[3], ticks[8]]  # 2000, 3000 (the first of 1000..1999 may be before 1400)
    check = ledger.database(
        produced, {"BTC-PERPETUAL": first}, [], [], no_fault, store_interval_ms=1000
    )
    assert check.holds and check.counts["due"] == 2 and check.counts["produced"] == 13
    late = {"BTC-PERPETUAL": [ticks[4], ticks[8], ticks[9]]}  # 2200 for 2000, and 3200
    check = ledger.database(produced, late, [], [], no_fault, store_interval_ms=1000)
    assert not check.holds and check.counts["lost"] == 1 and check.counts["foreign"] == 0
    gapped = [("BTC-PERPETUAL", 1900, 2100, "upstream lost")]
    check = ledger.database(produced, late, gapped, [], no_fault, store_interval_ms=1000)
    assert check.holds and check.counts["in_gap"] == 1
    wrong = {"BTC-PERPETUAL": [*first, (3500, 1.0)]}  # no update of the window had that mark
    assert not ledger.database(produced, wrong, [], [], no_fault, store_interval_ms=1000).holds


def stream(chain: str, prices: list[int], gaps: list[tuple[int, int]] = ()) -> Connection:
    connection = Connection("c", "http://replica", chain, None, opened_ms=1000, closed_ms=100_000)
    connection.tickers = {"btc_usd"}
    connection.prices["btc_usd"] = [(ts, 0.0) for ts in prices]
    connection.gaps["btc_usd"] = list(gaps)
    return connection


def test_streams_catch_a_missing_tick_a_duplicate_and_disorder():
    every = [ts for ts, _ in PRODUCED["btc_usd"]]
    good = stream("good", every)
    gapped = stream("gapped", [t for t in every if t != 1500], [(1450, 1550)])
    missing = stream("missing", [t for t in every if t != 1500])
    twice = stream("twice", [*every[:3], every[2], *every[3:]])
    disorder = stream("disorder", [every[0], every[2], every[1], *every[3:]])
    window = (0, 10**12)
    assert ledger.streams([good, gapped], PRODUCED, window, 0, no_fault).holds
    for bad, kind in ((missing, "lost"), (twice, "duplicates"), (disorder, "out_of_order")):
        check = ledger.streams([bad], PRODUCED, window, 0, no_fault)
        assert not check.holds and check.counts[kind] == 1, (kind, check.counts)


def test_a_resumed_chain_is_one_stream_and_a_stalled_tail_is_lost():
    every = [ts for ts, _ in PRODUCED["btc_usd"]]
    first, second = stream("chain", every[:4]), stream("chain", every[4:])
    assert ledger.streams([first, second], PRODUCED, (0, 10**12), 0, no_fault).holds
    stalled = stream("stalled", every[:4])
    stalled.closed_ms = 3000  # open until after the last tick, but received none after 1300
    check = ledger.streams([stalled], PRODUCED, (0, 10**12), 500, no_fault)
    assert check.counts["lost"] == 6


def test_channels_must_be_one_connection_with_exactly_the_expected_set():
    expected = {"btc_usd", "eth_usd"}
    index = "deribit_price_index."
    assert ledger.channels([[index + "btc_usd", index + "eth_usd"]], expected).holds
    assert not ledger.channels([[index + "btc_usd"]], expected).holds
    assert not ledger.channels(
        [[index + "btc_usd", index + "eth_usd", index + "x"]], expected
    ).holds
    assert not ledger.channels([[index + "btc_usd"], [index + "eth_usd"]], expected).holds


def test_the_schedule_is_a_function_of_the_seed():
    kinds = frozenset({"drop", "silence", "kill_serve", "storm"})
    one = [f.describe() for f in schedule(7, kinds, 30)]
    assert one == [f.describe() for f in schedule(7, kinds, 30)]
    assert one != [f.describe() for f in schedule(8, kinds, 30)]
    assert {f.split("(")[0] for f in one[:4]} == kinds  # every kind early
