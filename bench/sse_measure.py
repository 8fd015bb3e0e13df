"""What one SSE fan-out run measured, and how the clients' reports become those figures.

The simulator's own record of the ticks it sent (`sim/produced`) says what every stream should
have got; a direct subscriber of the simulator (`UpstreamProbe`) says when each tick left it, so
that latency can be told after the simulator's send; the load generators' reports (counts per
tick, 0.1 ms latency bins) are merged into one `Result`.
"""
# ruff: noqa: RUF003  # the tables use ×, − and – on purpose

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptomarket.instruments.names import is_instrument
from cryptomarket.prices.kinds import channel_of

if TYPE_CHECKING:
    from bench.sse_servers import Bench


def simulator_ticks(sim_url: str, ticker: str, since: int, until: int) -> list[int]:
    """Timestamps of the ticks (an instrument's `100ms` frames) the simulator sent with
    since <= ts < until: its own record, `sim/produced`."""
    from websockets.sync.client import connect  # noqa: PLC0415

    name = "instrument_name" if is_instrument(ticker) else "index_name"
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "sim/produced",
        "params": {name: ticker, "since": since - 1, "until": until - 1},
    }
    with connect(sim_url, open_timeout=10, max_size=None) as ws:
        ws.send(json.dumps(request))
        while (message := json.loads(ws.recv(timeout=10))).get("id") != 1:
            pass
    result = message["result"]
    if not result["complete"]:
        raise RuntimeError(f"the simulator forgot part of the window of {ticker}")
    return sorted({int(ts) for ts, *_ in result["ticks"]})


class UpstreamProbe:
    """A direct subscriber of the simulator: the latency floor before any server is involved."""

    def __init__(self, sim_url: str, ticker: str) -> None:
        self.sim_url = sim_url
        self.channel = channel_of(ticker)
        self.samples: list[tuple[int, float]] = []  # (timestamp, receipt − timestamp in ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from websockets.sync.client import connect  # noqa: PLC0415

        subscribe = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "public/subscribe",
            "params": {"channels": [self.channel]},
        }
        with contextlib.suppress(Exception), connect(self.sim_url, open_timeout=10) as ws:
            ws.send(json.dumps(subscribe))
            while not self._stop.is_set():
                try:
                    raw = ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                received = time.time() * 1000
                message = json.loads(raw)
                data = message.get("params", {}).get("data")
                if message.get("method") == "subscription" and isinstance(data, dict):
                    timestamp = int(data["timestamp"])
                    self.samples.append((timestamp, received - timestamp))

    def offsets(self, since: int, until: int) -> dict[int, float]:
        """Tick timestamp -> its latency here (ms), for the ticks in [since, until)."""
        return {ts: lat for ts, lat in self.samples if since <= ts < until}

    def latency(self, since: int, until: int) -> dict[str, float]:
        values = sorted(self.offsets(since, until).values())
        if not values:
            return {}
        return {"p50": values[len(values) // 2], "max": values[-1]}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class Result:
    kind: str
    size: int
    seconds: float
    opened: int = 0
    failed: int = 0
    open_errors: dict[str, int] = field(default_factory=dict)
    open_seconds: float = 0.0
    ticks: int = 0
    delivered: int = 0
    duplicates: int = 0
    closed_in_window: int = 0
    starved: int = 0  # streams that missed at least one tick of the window
    cpu_percent: float = 0.0
    loadgen_cpu_percent: float = 0.0
    rss0: int = 0
    rss_idle: int = 0
    rss_peak: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    upstream_ms: dict[str, float] = field(default_factory=dict)
    first_ms: dict[str, float] = field(default_factory=dict)  # per tick: first receipt − tick
    fanout_ms: dict[str, float] = field(default_factory=dict)  # per tick: last receipt − tick
    # Latency after the simulator's send: each event's less its tick's at the direct subscriber.
    # The simulator sends a tick up to 50 ms after its timestamp; that offset, drawn anew for
    # every run, is the same for every server and moves a run's p99 by as much as 20 ms.
    net_ms: dict[str, float] = field(default_factory=dict)
    gc_pauses: dict[str, float] = field(default_factory=dict)  # full collections in the window
    machine_busy: float = 0.0  # % of all cores busy in the window, every process
    others_percent: float = 0.0  # % of one core used in the window outside this benchmark
    others_before: float = 0.0  # the same, just before the run
    notes: list[str] = field(default_factory=list)

    @property
    def expected(self) -> int:
        return self.size * self.ticks

    @property
    def delivery(self) -> float:
        return 100.0 * self.delivered / self.expected if self.expected else 0.0

    @property
    def events_per_second(self) -> float:
        return self.delivered / self.seconds

    @property
    def target_per_second(self) -> float:
        return self.expected / self.seconds

    @property
    def kb_per_conn(self) -> float:
        return (self.rss_idle - self.rss0) / max(1, self.opened) / 1024

    @property
    def cpu_ms_per_1k_events(self) -> float:
        cpu_ms = self.cpu_percent / 100 * self.seconds * 1000
        return cpu_ms / self.delivered * 1000 if self.delivered else math.nan

    def record_opens(self, opened: dict[str, Any]) -> None:
        """The load generators' answer to `open`."""
        self.opened, self.failed = opened["opened"], opened["failed"]
        self.open_seconds, self.open_errors = opened["seconds"], opened["errors"]

    def opens(self) -> str:
        return f"{self.opened:,} open, {self.failed:,} failed in {self.open_seconds:.1f} s"

    def p(self, key: str) -> float:
        return self.latency_ms.get(key, math.nan)

    def net(self, key: str) -> float:
        return self.net_ms.get(key, math.nan)


def collect(bench: Bench, reports: list[dict[str, Any]], result: Result, w0: int, w1: int) -> None:
    """Merge the clients' counts with the simulator's ticks of the window."""
    ticks = simulator_ticks(bench.sim_url, bench.args.ticker, w0, w1)
    result.ticks = len(ticks)
    result.upstream_ms = bench.probe.latency(w0, w1)
    per_tick: dict[int, int] = {}
    bins: dict[int, int] = {}
    per_conn: dict[int, int] = {0: result.failed} if result.failed else {}  # never opened: 0
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    sent = bench.probe.offsets(w0, w1)  # tick -> its latency at the direct subscriber (ms)
    net: dict[int, int] = {}  # 0.1 ms bins
    for report in reports:
        for ts, ms_bins in report.get("tick_bins", {}).items():
            if (offset := sent.get(int(ts))) is not None:
                for ms, count in ms_bins.items():
                    at = round((int(ms) + 0.5 - offset) * 10)
                    net[at] = net.get(at, 0) + count
        for ts, count in report["per_tick"].items():
            per_tick[int(ts)] = per_tick.get(int(ts), 0) + count
        for value, count in report["latency_bins"].items():
            bins[int(value)] = bins.get(int(value), 0) + count
        for value, count in report["per_conn_counts"].items():
            per_conn[int(value)] = per_conn.get(int(value), 0) + count
        for ts, value in report["first"].items():
            first[int(ts)] = min(first.get(int(ts), math.inf), value)
        for ts, value in report["last"].items():
            last[int(ts)] = max(last.get(int(ts), 0.0), value)
        result.duplicates += report["duplicates"]
        result.closed_in_window += report["closed_in_window"]
    if unknown := set(per_tick) - set(ticks):
        result.notes.append(
            f"{len(unknown)} tick timestamps received that the simulator never sent"
        )
    if result.duplicates:
        result.notes.append(f"{result.duplicates} duplicate or out-of-order price events")
    result.delivered = sum(per_tick.values())
    result.starved = sum(count for got, count in per_conn.items() if got < result.ticks)
    result.latency_ms = percentiles(bins, (50, 90, 99, 99.9))
    result.net_ms = percentiles(net, (50, 90, 99, 99.9))
    result.first_ms = median_and_worst(list(first.values()))
    result.fanout_ms = median_and_worst(list(last.values()))


def percentiles(bins: dict[int, int], wanted: tuple[float, ...]) -> dict[str, float]:
    """Percentiles of a histogram of 0.1 ms bins."""
    total = sum(bins.values())
    if not total:
        return {}
    ordered = sorted(bins.items())
    out: dict[str, float] = {}
    for w in wanted:
        rank, seen = math.ceil(total * w / 100), 0
        for value, count in ordered:
            seen += count
            if seen >= rank:
                out[f"p{w:g}"] = value / 10
                break
    out["max"] = ordered[-1][0] / 10
    return out


def median_and_worst(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"median": ordered[len(ordered) // 2], "worst": ordered[-1]}


def gc_pauses(path: Path, since: int, until: int) -> dict[str, float]:
    """Full (generation 2) collections that ended in the window: count, worst and total pause."""
    pauses = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            at, generation, pause, _collected = line.split()
            if generation == "2" and since <= float(at) * 1000 < until:
                pauses.append(float(pause))
    return {"count": len(pauses), "worst": max(pauses, default=0.0), "total": sum(pauses)}
