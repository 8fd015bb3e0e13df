"""The dashboard's history chart in a real browser: how long a 7-day range takes to draw.

    .venv/bin/python -m bench.bench_dashboard               # 7 days of 2 tickers, 20 draws each
    .venv/bin/python -m bench.bench_dashboard --draws 5     # a quick run

A SQLite database holds 7 days of ticks (2 tickers, one a second each: 1,209,600 rows, bulk-loaded
as bench_history does) with their candles rebuilt; `cryptomarket serve` answers from it (a
simulator stands in for Deribit, so the service runs as it does in production). Headless Chromium
(Playwright) opens the dashboard, fills in the history form and presses Draw, again and again:

- a 7-day range: the chart picks 10-minute candles (1,008 points) from /api/v1/prices/candles;
- beside it, the baseline of the same run: a 1-hour range, drawn from the raw ticks (3,600 points
  of /api/v1/prices/by-date), the chart's other path.

Each draw reports `data-draw-ms`, which the page sets from the moment the last page of the answer
was in until the next frame after the chart was drawn (series built, uPlot drawn), and the whole
time from the click, with the request and its answer. Target (issue #13): a 7-day range draws
within 300 ms of the answer arriving (p99 of draw-ms).
"""

# ruff: noqa: S101

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, async_playwright

from bench.bench_candles import rebuild
from bench.bench_history import DAY, T0, load_sqlite
from bench.common import (
    TICKERS,
    LoadWatch,
    Report,
    exit_on_sigterm,
    fmt,
    percentile,
    temporary_dir,
)
from bench.sse_common import Child, free_port, spawn, wait_port
from cryptomarket.core.config import Settings
from cryptomarket.core.db import Database
from cryptomarket.core.migrate import upgrade

HOST = "127.0.0.1"
CHROMIUM = "/usr/bin/chromium"
DAYS = 7
TARGET_MS = 300.0
ROOT = Path(__file__).resolve().parents[1]
PYTHON_BIN = ROOT / ".venv" / "bin"

# One draw, timed in the page: Draw pressed, then wait for this draw's figure.
DRAW = """async () => {
  const chart = document.getElementById("chart");
  delete chart.dataset.drawMs;
  const pressed = performance.now();
  document.getElementById("draw").click();
  while (chart.dataset.drawMs === undefined) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
  }
  return {
    total: performance.now() - pressed,
    draw: Number(chart.dataset.drawMs),
    points: Number(chart.dataset.points),
    resolution: chart.dataset.resolution,
  };
}"""


def local_input(seconds: int) -> str:
    """A datetime-local value; the browser runs in UTC."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def draws(page: Page, start: int, end: int, count: int) -> list[dict[str, Any]]:
    await page.fill("#hist-ticker", TICKERS[0])
    await page.fill("#hist-start", local_input(start))
    await page.fill("#hist-end", local_input(end))
    await page.evaluate(DRAW)  # warm-up: the first draw compiles and caches
    return [await page.evaluate(DRAW) for _ in range(count)]


async def measure(base_url: str, count: int) -> dict[str, list[dict[str, Any]]]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 720}, timezone_id="UTC", locale="en-US"
            )
            page = await context.new_page()
            await page.goto(base_url + "/")
            end = T0 + DAYS * DAY
            return {
                "week": await draws(page, T0, end - 1, count),
                "hour": await draws(page, end - 3600, end - 1, count),
            }
        finally:
            await browser.close()


def summary(samples: list[dict[str, Any]], key: str) -> tuple[float, float]:
    values = [float(sample[key]) for sample in samples]
    return percentile(values, 50), percentile(values, 99)


def start_children(tmp: Path, database_url: str) -> str:
    """The simulator and `cryptomarket serve` on the database; the service's base URL."""
    logs = tmp / "logs"
    logs.mkdir()
    sim_port, port = free_port(), free_port()
    command = str(PYTHON_BIN / "cryptomarket")
    simulator = spawn(
        "simulator",
        [command, "simulate", "--host", HOST, "--port", str(sim_port)],
        cwd=tmp,
        log_path=logs / "simulator.log",
    )
    _children.append(simulator)
    wait_port(HOST, sim_port, 30, simulator)
    ours = set(Settings.model_fields)  # a developer's exported settings stay out
    env = {key: value for key, value in os.environ.items() if key not in ours} | {
        "DATABASE_URL": database_url,
        "DERIBIT_WS_URL": f"ws://{HOST}:{sim_port}/ws/api/v2",
        "TRACKED_TICKERS": ",".join(TICKERS),
        "HISTORY_BURST": "100000",  # the bench's draws, not the limit, are measured
        "LOG_LEVEL": "WARNING",
    }
    serve = spawn(
        "serve",
        [command, "serve", "--host", HOST, "--port", str(port)],
        env=env,
        cwd=tmp,
        log_path=logs / "serve.log",
    )
    _children.append(serve)
    wait_port(HOST, port, 60, serve)
    base_url = f"http://{HOST}:{port}"
    assert httpx.get(base_url + "/health", timeout=30).status_code == 200
    return base_url


_children: list[Child] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=20, help="timed draws per range")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    exit_on_sigterm()
    report = Report("dashboard", "The dashboard's 7-day history draw, beside a 1-hour one")
    busy = LoadWatch.busy_processes()
    rows = DAYS * DAY * len(TICKERS)
    report.text(
        f"{rows:,} ticks ({len(TICKERS)} tickers, one a second each, {DAYS} days) on SQLite; "
        f"{args.draws} timed draws per range in headless Chromium. Other busy processes at the "
        "start: " + ("; ".join(busy) if busy else "none")
    )
    with temporary_dir("bench-dashboard-") as tmp:
        path = tmp / "dashboard.sqlite3"
        database = Database(f"sqlite:///{path}")
        upgrade(database.urls.sync_url)
        print(f"loading {rows:,} ticks...", flush=True)
        load_sqlite(path, rows, args.seed, 100_000)
        rebuild(database)
        try:
            base_url = start_children(tmp, f"sqlite:///{path}")
            results = asyncio.run(measure(base_url, args.draws))
        finally:
            for child in reversed(_children):
                with contextlib.suppress(Exception):
                    child.stop(timeout=10)
    week, hour = results["week"], results["hour"]
    assert {s["resolution"] for s in week} == {"10"}, week[0]
    assert {s["resolution"] for s in hour} == {"ticks"}, hour[0]
    table = []
    for name, samples in (("7 days: 10-minute candles", week), ("1 hour: raw ticks", hour)):
        draw50, draw99 = summary(samples, "draw")
        total50, total99 = summary(samples, "total")
        table.append(
            [
                name,
                f"{samples[0]['points']:,}",
                fmt(draw50, 0),
                fmt(draw99, 0),
                fmt(total50, 0),
                fmt(total99, 0),
            ]
        )
    week_p99 = summary(week, "draw")[1]
    verdict = "met" if week_p99 <= TARGET_MS else "MISSED"
    report.table(
        (
            "range drawn",
            "points",
            "draw p50 ms",
            "draw p99 ms",
            "click to drawn p50 ms",
            "click to drawn p99 ms",
        ),
        table,
    )
    report.text(
        f"Target: the 7-day draw within {TARGET_MS:.0f} ms of the answer arriving (p99 of draw "
        f"ms): {fmt(week_p99, 0)} ms, **{verdict}**. The 1-hour draw from raw ticks is the "
        "baseline, measured in the same run."
    )
    busy = LoadWatch.busy_processes()
    report.text("Other busy processes at the end: " + ("; ".join(busy) if busy else "none"))
    print(report.render())
    report.write(args.output)


if __name__ == "__main__":
    main()
