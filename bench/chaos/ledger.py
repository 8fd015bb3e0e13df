"""The invariants, checked exactly against the simulator's record of every tick it produced.

Each check gives counts and the tick ids (`<ticker>:<timestamp>`, as the stream's event ids) of
what broke, so a failing run can be replayed with its seed and the ticks looked up in its logs.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bench.chaos.clients import Connection
from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.kinds import channel_of

SHOWN_RUNS = 4  # runs of consecutive tick ids printed per ticker; the counts are always whole
Blame = Callable[[int], str]  # a tick timestamp -> the fault that preceded it


@dataclass
class Check:
    name: str
    holds: bool
    counts: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)


class Spans:
    """Inclusive [from, to] spans of one ticker, for fast 'is this timestamp covered' lookups."""

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for low, high in sorted(spans):
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        self._lows = [low for low, _ in merged]
        self._highs = [high for _, high in merged]

    def covers(self, ts: int) -> bool:
        i = bisect.bisect_right(self._lows, ts) - 1
        return i >= 0 and ts <= self._highs[i]


def runs(ticker: str, missing: Sequence[int], order: Sequence[int], blame: Blame) -> str:
    """Missing ticks as runs of consecutive produced ticks: `t:first..t:last (n, after <fault>)`."""
    position = {ts: i for i, ts in enumerate(order)}
    groups: list[list[int]] = []
    for ts in sorted(missing):
        i = position.get(ts)
        if groups and i is not None and position.get(groups[-1][-1]) == i - 1:
            groups[-1].append(ts)
        else:
            groups.append([ts])
    shown = [
        f"{ticker}:{g[0]}..{g[-1]} ({len(g)}, after {blame(g[0])})"
        if len(g) > 1
        else f"{ticker}:{g[0]} (after {blame(g[0])})"
        for g in groups[:SHOWN_RUNS]
    ]
    more = f" +{len(groups) - SHOWN_RUNS} more run(s)" if len(groups) > SHOWN_RUNS else ""
    return ", ".join(shown) + more


def ids(ticker: str, stamps: Sequence[int]) -> str:
    shown = ", ".join(f"{ticker}:{ts}" for ts in stamps[:SHOWN_RUNS])
    more = f" (+{len(stamps) - SHOWN_RUNS} more)" if len(stamps) > SHOWN_RUNS else ""
    return shown + more


def database(
    produced: dict[str, list[tuple[int, float]]],
    rows: dict[str, list[tuple[int, float]]],
    gaps: list[tuple[str, int, int, str]],
    gap_log: list[tuple[str, int, int, str]],
    blame: Blame,
    *,
    store_interval_ms: int = 0,
) -> Check:
    """Every produced tick is stored (with its price) or inside a gap recorded at the end; of an
    instrument, the first update of each `store_interval_ms` window (0: every update).

    Rows that are no produced tick (a chart point from a backfill, a wrong price) are allowed
    inside a recorded gap and counted; outside one they are violations. The primary key makes a
    duplicate row impossible, so duplicates are not counted here but in the streams.
    """
    counts = dict.fromkeys(
        ("produced", "due", "stored", "in_gap", "lost", "foreign_in_gap", "foreign", "gap_ms"), 0
    )
    details: list[str] = []
    for ticker, ticks in sorted(produced.items()):
        spans = Spans((a, b) for t, a, b, _ in gaps if t == ticker)
        ever = Spans((a, b) for t, a, b, _ in gap_log if t == ticker)
        due = first_per_window(ticks, store_interval_ms) if is_instrument(ticker) else ticks
        lost, lost_once_gapped, foreign = _ticker_ledger(
            ticks, rows.get(ticker, []), spans, ever, counts, due=due
        )
        counts["lost"] += len(lost)
        counts["foreign"] += len(foreign)
        counts["gap_ms"] += sum(b - a + 1 for t, a, b, _ in gaps if t == ticker)
        order = [ts for ts, _ in ticks]
        if lost:
            details.append(
                f"lost from the database: {len(lost)}: {runs(ticker, lost, order, blame)}"
            )
        if lost_once_gapped:
            details.append(
                f"  of which {len(lost_once_gapped)} lay in a gap that was later removed "
                f"(gap backfill claimed them): {runs(ticker, lost_once_gapped, order, blame)}"
            )
        if foreign:
            details.append(
                f"rows that are no produced tick, outside any gap: {ids(ticker, foreign)}"
            )
    holds = counts["lost"] == 0 and counts["foreign"] == 0
    return Check("database: every produced tick stored once or in a gap", holds, counts, details)


def first_per_window(ticks: list[tuple[int, float]], interval_ms: int) -> list[tuple[int, float]]:
    """What the gateway stores of an instrument's updates when it missed none. The window the
    run's first tick lies in is left out: its first update may have come before the run."""
    if interval_ms <= 0 or not ticks:
        return ticks
    kept: list[tuple[int, float]] = []
    last = ticks[0][0] // interval_ms
    for ts, price in ticks:
        if ts // interval_ms > last:
            kept.append((ts, price))
            last = ts // interval_ms
    return kept


def _ticker_ledger(
    ticks: list[tuple[int, float]],
    rows: list[tuple[int, float]],
    spans: Spans,
    ever: Spans,
    counts: dict[str, int],
    *,
    due: list[tuple[int, float]],
) -> tuple[list[int], list[int], list[int]]:
    """One ticker's (lost, lost but once in a gap, foreign rows); adds to `counts`. `due`: the
    ticks that must be stored (or in a gap); a row may be any produced tick."""
    stored = dict(rows)
    truth = dict(ticks)
    lost: list[int] = []
    lost_once_gapped: list[int] = []
    foreign: list[int] = []
    counts["produced"] += len(ticks)
    counts["due"] += len(due)
    for ts, price in due:
        if stored.get(ts) == price:
            counts["stored"] += 1
        elif spans.covers(ts):
            counts["in_gap"] += 1
        else:
            lost.append(ts)
            if ever.covers(ts):
                lost_once_gapped.append(ts)
    for ts, price in stored.items():
        if truth.get(ts) == price:
            continue
        if spans.covers(ts):
            counts["foreign_in_gap"] += 1
        else:
            foreign.append(ts)
    return lost, lost_once_gapped, foreign


def streams(
    connections: list[Connection],
    produced: dict[str, list[tuple[int, float]]],
    window: tuple[int, int],
    edge_ms: int,
    blame: Blame,
) -> Check:
    """Every timer=0 stream got each tick of its tickers while connected, or a gap covering it.

    Connections of one chain (a client resuming with Last-Event-ID) are one stream. Between the
    first and the last price a stream got of a ticker, every produced tick must have come, in
    order, once, or lie in a `gap` event it got; before the first and after the last, ticks
    produced more than `edge_ms` after it connected and before it closed count the same way.
    """
    counts = dict.fromkeys(("streams", "received", "lost", "duplicates", "out_of_order"), 0)
    counts["gap_events"] = 0
    details: list[str] = []
    chains: dict[str, list[Connection]] = {}
    for connection in connections:
        if connection.opened_ms and connection.tickers:
            chains.setdefault(connection.chain, []).append(connection)
    low, high = window
    for chain, parts in sorted(chains.items()):
        counts["streams"] += 1
        opened, closed = parts[0].opened_ms, parts[-1].closed_ms
        tickers = set.intersection(*(p.tickers for p in parts)) & set(produced)
        for ticker in sorted(tickers):
            got = [tick for p in parts for tick in p.prices.get(ticker, [])]
            gap_spans = [span for p in parts for span in p.gaps.get(ticker, [])]
            counts["received"] += len(got)
            counts["gap_events"] += len(gap_spans)
            spans = Spans(gap_spans)
            stamps = [ts for ts, _ in got]
            seen: set[int] = set()
            duplicates, disorder = [], []
            for i, ts in enumerate(stamps):
                if ts in seen:
                    duplicates.append(ts)
                elif i and ts < stamps[i - 1]:
                    disorder.append(ts)
                seen.add(ts)
            start = min(stamps[0], opened + edge_ms) if stamps else opened + edge_ms
            end = max(stamps[-1], closed - edge_ms) if stamps else closed - edge_ms
            start, end = max(start, low), min(end, high)
            lost = [
                ts
                for ts, _ in produced[ticker]
                if start <= ts <= end and ts not in seen and not spans.covers(ts)
            ]
            counts["lost"] += len(lost)
            counts["duplicates"] += len(duplicates)
            counts["out_of_order"] += len(disorder)
            where = f"{chain} ({len(parts)} connection(s), last on {parts[-1].replica})"
            if lost:
                order = [ts for ts, _ in produced[ticker]]
                details.append(
                    f"{where}: {len(lost)} neither sent nor in a gap: "
                    f"{runs(ticker, lost, order, blame)}"
                )
            if duplicates:
                details.append(f"{where}: sent twice: {ids(ticker, duplicates)}")
            if disorder:
                details.append(f"{where}: out of order: {ids(ticker, disorder)}")
    holds = counts["lost"] == counts["duplicates"] == counts["out_of_order"] == 0
    return Check(
        "streams: every timer=0 tick sent once, in order, or a gap", holds, counts, details
    )


def channels(upstream: list[list[str]], expected_tickers: set[str]) -> Check:
    """One upstream connection carries exactly the tracked plus the stored tickers."""
    expected = {channel_of(t) for t in expected_tickers}
    got = set(upstream[0]) if len(upstream) == 1 else set()
    missing, extra = sorted(expected - got), sorted(got - expected)
    details = []
    if len(upstream) != 1:
        details.append(f"{len(upstream)} upstream connection(s) with channels, not 1")
    if missing:
        details.append(f"stored or tracked but not subscribed upstream: {missing}")
    if extra:
        details.append(f"subscribed upstream but neither tracked nor stored: {extra}")
    counts = {"expected": len(expected), "missing": len(missing), "extra": len(extra)}
    holds = len(upstream) == 1 and not missing and not extra
    return Check("upstream channels = tracked + stored subscriptions", holds, counts, details)
