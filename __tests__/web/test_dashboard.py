"""The dashboard at `/` in a real headless Chromium, against the real service and the simulator.

How the tests wait: on a condition, never for a fixed time. Playwright awaits DOM states (`expect`,
`wait_for_function`); `eventually` awaits the simulator's or the stream hub's progress. That a
price stopped is shown without a pause either: each check is closed by a later event of the same
SSE stream (the stream is in order), after which the page's count of price events is compared.

Screenshots: test-artifacts/web/ (paths printed). `UPDATE_SCREENSHOT=1` also rewrites
docs/dashboard.png, the README's picture, from the desktop run.
"""

import csv
import io
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Locator, Page, expect

from __tests__.helpers import eventually, eventually_async
from __tests__.service import Service
from __tests__.simulated import sim_control
from __tests__.web.conftest import PageProblems, screenshot, update_readme_screenshot
from cryptomarket.core.db import Database, database_urls
from cryptomarket.prices.history import load_history
from cryptomarket.prices.models import Gap, Tick
from cryptomarket.prices.repository import PriceRepository

README_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


def row(page: Page, ticker: str) -> Locator:
    return page.locator(f'#subs li[data-ticker="{ticker}"]')


async def updates_reach(page: Page, ticker: str, count: int) -> None:
    """Until the ticker's row has shown `count` prices."""
    await page.wait_for_function(
        """([ticker, count]) => {
            const row = document.querySelector(`#subs li[data-ticker="${ticker}"]`);
            return row !== null && Number(row.dataset.updates) >= count;
        }""",
        arg=[ticker, count],
    )


async def counts(page: Page) -> dict[str, int]:
    """Price events the page received in all, and shown per ticker, read at one instant."""
    result: dict[str, int] = await page.evaluate(
        """() => {
            const counts = {total: Number(document.getElementById('price-count').dataset.count)};
            for (const row of document.querySelectorAll('#subs li[data-ticker]')) {
                counts[row.dataset.ticker] = Number(row.dataset.updates);
            }
            return counts;
        }"""
    )
    return result


async def subscribe(page: Page, ticker: str, timer: int) -> None:
    await page.fill("#sub-ticker", ticker)
    await page.fill("#sub-timer", str(timer))
    await page.click("#subscribe")
    await expect(row(page, ticker)).to_have_count(1)
    await expect(row(page, ticker).locator(".sub-meta")).to_contain_text(
        "every tick" if timer == 0 else f"every {timer} s"
    )


async def sign_in(page: Page, user_id: str, client_id: str, secret: str) -> None:
    await page.fill("#user-id", user_id)
    await page.fill("#client-id", client_id)
    await page.fill("#client-secret", secret)
    await page.click("#sign-in")


async def series_pixels(page: Page) -> int:
    """Opaque pixels of the chart's line colour (#2563eb): the series was drawn, not just axes."""
    pixels: int = await page.evaluate(
        """() => {
            const canvas = document.querySelector('#chart canvas');
            const context = canvas.getContext('2d');
            const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
            let found = 0;
            for (let i = 0; i < data.length; i += 4) {
                const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
                if (a > 200 && b > 190 && r < 110 && g < 160) found += 1;
            }
            return found;
        }"""
    )
    return pixels


def local_input(moment: datetime) -> str:
    """A datetime-local value; the browser runs in UTC (timezone_id below)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


async def stored_count(service: Service, ticker: str, start: datetime, end: datetime) -> int:
    response = await service.client.get(
        "/api/v1/prices/by-date",
        params={
            "ticker": ticker,
            "start_date": start.isoformat(),
            "end_date": end.isoformat(),
            "limit": 10_000,
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["next_cursor"] is None
    return len(body["items"])


async def test_sign_in_watch_prices_cancel_and_chart(
    browser: Browser, web_service: Service
) -> None:
    service = web_service
    simulator = service.simulator
    context = await browser.new_context(
        viewport={"width": 1280, "height": 720}, timezone_id="UTC", locale="en-US"
    )
    page = await context.new_page()
    problems = PageProblems(page)
    await page.goto(service.base_url + "/")
    await expect(page.locator("#sign-in-card")).to_be_visible()
    await expect(page.locator("#live-card")).to_be_hidden()
    await expect(page.locator("#upstream")).to_have_attribute("data-state", "connected")

    # Sign in with the simulator's key: the page learns the account from the answer.
    await sign_in(page, "alice", "sim-alice", "sim-alice-secret")
    await expect(page.locator("#user-label")).to_have_text("alice · account 1001 · main")
    await expect(page.locator("#sign-in-card")).to_be_hidden()
    await expect(page.locator("#stream")).to_have_attribute("data-state", "live")
    assert await page.input_value("#client-secret") == ""

    # Two tickers, every tick: at least three live prices each, the very prices Deribit sent.
    await subscribe(page, "btc_usd", 0)
    await subscribe(page, "eth_usd", 0)
    await updates_reach(page, "btc_usd", 3)
    await updates_reach(page, "eth_usd", 3)
    for ticker in ("btc_usd", "eth_usd"):
        shown = row(page, ticker)
        # One read of both: a tick arriving between two reads would pair one's time with
        # the next one's price.
        timestamp, price = await shown.evaluate(
            "row => [Number(row.dataset.timestamp), Number(row.dataset.price)]"
        )
        assert (timestamp, price) in simulator.history(ticker)
        await expect(shown.locator(".sub-price")).not_to_have_text("—")
    await expect(page.locator("#upstream")).to_have_attribute("data-state", "connected")

    # History: a range whose prices are all stored (its end, a whole second, is before the
    # newest stored price), drawn and counted exactly as the API counts it.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    ranges: list[tuple[datetime, int]] = []

    async def enough_stored() -> bool:
        latest = await service.client.get("/api/v1/prices/latest", params={"ticker": "btc_usd"})
        if latest.status_code != 200:
            return False
        end = datetime.fromtimestamp(latest.json()["timestamp"] // 1000, UTC)
        ranges.append((end, await stored_count(service, "btc_usd", start, end)))
        return ranges[-1][1] >= 10

    await eventually_async(enough_stored, what="ten prices of btc_usd stored")
    end, expected = ranges[-1]
    await page.fill("#hist-ticker", "btc_usd")
    await page.fill("#hist-start", local_input(start))
    await page.fill("#hist-end", local_input(end))
    await page.click("#draw")
    await expect(page.locator("#chart")).to_have_attribute("data-points", str(expected))
    await expect(page.locator("#history-summary")).to_contain_text(f"{expected} prices of btc_usd")
    assert await series_pixels(page) > 200

    assert problems.take() == []

    # An unknown ticker: the service's sentence (its 404 is the one console error), then the
    # chart again.
    await page.fill("#hist-ticker", "nope_usd")
    async with page.expect_console_message(lambda message: "404" in message.text):
        await page.click("#draw")
    await expect(page.locator("#history-summary")).to_contain_text("nope_usd")
    await expect(page.locator("#chart")).not_to_have_attribute("data-points", str(expected))
    assert [message for message in problems.take() if "404" not in message] == []
    await page.fill("#hist-ticker", "btc_usd")
    await page.click("#draw")
    await expect(page.locator("#chart")).to_have_attribute("data-points", str(expected))

    # A day of history loaded from Deribit's chart data (as `cryptomarket backfill` does), drawn
    # by the "24 h" button; the first point may fall just outside the range by now.
    loaded = await load_history(service.settings, "btc_usd", "1d")
    assert loaded > 100
    await page.click("button[data-range='86400']")
    await page.wait_for_function(
        "least => Number(document.getElementById('chart').dataset.points) >= least",
        arg=loaded - 1,
    )
    assert await series_pixels(page) > 500

    path = await screenshot(page, "dashboard-desktop.png")
    if update_readme_screenshot():
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOT)

    # Cancel one: its row goes, and no price of it arrives after eth_usd prices that Deribit
    # sent after the cancellation (the stream delivers in order).
    await row(page, "btc_usd").get_by_role("button", name="Cancel btc_usd").click()
    await expect(row(page, "btc_usd")).to_have_count(0)
    sent_before = simulator.history("eth_usd")[-1][0]
    await page.wait_for_function(
        """after => Number(document.querySelector('#subs li[data-ticker="eth_usd"]')
                           .dataset.timestamp) > after""",
        arg=sent_before,
    )
    before = await counts(page)
    await updates_reach(page, "eth_usd", before["eth_usd"] + 3)
    after = await counts(page)
    assert after["total"] - before["total"] == after["eth_usd"] - before["eth_usd"]
    assert "btc_usd" not in after

    # Cancel all: the list empties, and no price follows. Each check is closed off by the one
    # price of a ticker no one watched before (sol_usdc, then xrp_usdc): its first price reaches
    # the stream once, then its 600 s timer holds it back; in between, btc_usd (tracked, so still
    # coming in) passes three more ticks through the hub, none of which may reach this page.
    await page.click("#cancel-all")
    await expect(page.locator("#subs-empty")).to_be_visible()
    await expect(page.locator("#cancel-all")).to_be_disabled()
    await subscribe(page, "sol_usdc", 600)
    await updates_reach(page, "sol_usdc", 1)
    settled = await counts(page)
    recent = service.runtime.hub.recent["btc_usd"]
    newest = recent[-1].timestamp
    await eventually(
        lambda: sum(tick.timestamp > newest for tick in recent) >= 3,
        what="three more btc_usd ticks through the hub",
    )
    await subscribe(page, "xrp_usdc", 600)
    await updates_reach(page, "xrp_usdc", 1)
    final = await counts(page)
    assert final == {"total": settled["total"] + 1, "sol_usdc": 1, "xrp_usdc": 1}
    assert problems.take() == []

    # Sign out: the session stops working, and a reload does not continue it.
    await page.click("#sign-out")
    await expect(page.locator("#sign-in-card")).to_be_visible()
    await expect(page.locator("#stream")).to_have_attribute("data-state", "off")
    await expect(page.locator("#notice")).to_contain_text("Signed out")
    status = await page.evaluate("fetch('/api/v1/users/alice').then((r) => r.status)")
    assert status == 401
    await page.reload()
    await expect(page.locator("#sign-in-card")).to_be_visible()
    await expect(page.locator("#stream")).to_have_attribute("data-state", "off")
    await context.close()


async def test_phone_width_continues_an_existing_session(
    browser: Browser, web_service: Service
) -> None:
    service = web_service
    context = await browser.new_context(
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        timezone_id="UTC",
        locale="en-US",
    )
    page = await context.new_page()
    await page.goto(service.base_url + "/")

    # No session in this browser yet: the page says so instead of failing silently.
    await page.click("#continue-session")
    await expect(page.locator("#notice")).to_contain_text("No session in this browser")
    await expect(page.locator("#sign-in-card")).to_be_visible()

    # A wrong key: Deribit's refusal is shown, the page stays signed out.
    await sign_in(page, "bob", "sim-bob", "wrong-secret")
    await expect(page.locator("#notice")).to_contain_text("Sign-in failed")
    await expect(page.locator("#sign-in-card")).to_be_visible()

    # A session made elsewhere in this browser (here: a request sharing its cookies).
    response = await context.request.post(
        service.base_url + "/api/v1/sessions",
        data={"user_id": "bob", "client_id": "sim-bob", "client_secret": "sim-bob-secret"},
    )
    assert response.status == 201
    await page.click("#continue-session")
    await expect(page.locator("#user-label")).to_contain_text("bob")
    await expect(page.locator("#stream")).to_have_attribute("data-state", "live")

    await subscribe(page, "eth_usd", 0)
    await updates_reach(page, "eth_usd", 3)

    # Deribit cuts the service off and refuses it for a while: the badge follows both ways.
    upstream = page.locator("#upstream")
    await expect(upstream).to_have_attribute("data-state", "connected")
    await sim_control(
        service.simulator,
        ("sim/refuse_connections", {"seconds": 1.5}),
        ("sim/drop_connections", {}),
    )
    await expect(upstream).to_have_attribute("data-state", "reconnecting")
    await expect(page.locator("#log")).to_contain_text("Deribit connection: reconnecting")
    await expect(upstream).to_have_attribute("data-state", "connected")
    shown = await counts(page)
    await updates_reach(page, "eth_usd", shown["eth_usd"] + 1)

    await page.click("button[data-range='900']")
    await expect(page.locator("#chart")).not_to_have_attribute("data-points", "0")
    await expect(page.locator("#chart canvas")).to_have_count(1)

    # Nothing wider than the screen.
    widths = await page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths == [375, 375]
    await screenshot(page, "dashboard-phone.png", full_page=True)

    # A reload continues the session by itself, with the stored subscription.
    await page.reload()
    await expect(page.locator("#stream")).to_have_attribute("data-state", "live")
    await expect(row(page, "eth_usd")).to_have_count(1)
    await updates_reach(page, "eth_usd", 1)
    await context.close()


# Seeded history of eth_usd (which nothing ingests here): a tick a minute for 3 days from
# 2024-05-01 00:00 UTC, but none from 2024-05-02 12:00 for 30 minutes, and a recorded gap
# inside the 3-minute bucket of 2024-05-03 06:00.
SEED_START = datetime(2024, 5, 1, tzinfo=UTC)
SEED_DAYS = 3
HOLE = (SEED_START + timedelta(days=1, hours=12), timedelta(minutes=30))
RECORDED_GAP = SEED_START + timedelta(days=2, hours=6, minutes=1)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


async def seed_eth_usd(service: Service) -> None:
    minutes = (SEED_START + timedelta(minutes=i) for i in range(SEED_DAYS * 24 * 60))
    ticks = [
        Tick("eth_usd", 3000.0 + i % 97, ms(moment))
        for i, moment in enumerate(minutes)
        if not HOLE[0] <= moment < HOLE[0] + HOLE[1]
    ]
    database = Database(database_urls(service.settings).async_url)
    try:
        async with database.transaction() as connection:
            prices = PriceRepository(connection, database.tables)
            await prices.add_ticks(ticks)
            start = ms(RECORDED_GAP)
            await prices.add_gap(Gap("eth_usd", start, start + 30_000, "test"))
    finally:
        await database.dispose()


async def candles_of(service: Service, params: dict[str, str]) -> list[dict[str, Any]]:
    response = await service.client.get(
        "/api/v1/prices/candles", params={**params, "limit": "10000"}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["next_cursor"] is None
    items: list[dict[str, Any]] = body["items"]
    return items


async def test_long_ranges_draw_candles_and_download_them(
    browser: Browser, web_service: Service
) -> None:
    service = web_service
    await seed_eth_usd(service)
    context = await browser.new_context(
        viewport={"width": 1280, "height": 720}, timezone_id="UTC", locale="en-US"
    )
    page = await context.new_page()
    problems = PageProblems(page)
    await page.goto(service.base_url + "/")
    chart = page.locator("#chart")
    download = page.locator("#hist-csv")

    # 3 days are 4,320 minutes: 1-minute candles would be more than 2,000, 3-minute ones 1,440.
    end = SEED_START + timedelta(days=SEED_DAYS)
    await page.fill("#hist-ticker", "eth_usd")
    await page.fill("#hist-start", local_input(SEED_START))
    await page.fill("#hist-end", local_input(end))
    await page.click("#draw")
    await expect(chart).to_have_attribute("data-resolution", "3")
    params = {
        "ticker": "eth_usd",
        "resolution": "3",
        "start_date": SEED_START.isoformat(),
        "end_date": end.isoformat(),
    }
    candles = await candles_of(service, params)
    # The 30 minutes without ticks are 10 buckets without candles; one candle says gap.
    assert len(candles) == 1440 - 10
    assert [c["start"] for c in candles if c["gap"]] == [ms(RECORDED_GAP) - 60_000]
    # A null point breaks the line twice: across the missing buckets, and after the gap's.
    await expect(chart).to_have_attribute("data-points", str(len(candles) + 2))
    await expect(chart).to_have_attribute("data-ticker", "eth_usd")
    await expect(page.locator("#history-summary")).to_contain_text(
        "1,430 3-minute candles of eth_usd"
    )
    # The draw's time, for bench/bench_dashboard.py: whole milliseconds.
    await expect(chart).to_have_attribute("data-draw-ms", re.compile(r"^\d+$"))
    assert await series_pixels(page) > 500
    await screenshot(page, "dashboard-candles.png")

    # The download is the same candles, whole, as CSV.
    href = await download.get_attribute("href") or ""
    assert href.startswith("/api/v1/prices/candles?")
    assert "format=csv" in href and "resolution=3" in href
    response = await service.client.get(href)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(response.text)))) == len(candles)

    # An hour is still drawn from its ticks, and downloaded as ticks.
    hour_end = SEED_START + timedelta(hours=1)
    await page.fill("#hist-end", local_input(hour_end))
    await page.click("#draw")
    expected = await stored_count(service, "eth_usd", SEED_START, hour_end)
    await expect(chart).to_have_attribute("data-resolution", "ticks")
    await expect(chart).to_have_attribute("data-points", str(expected))
    await expect(page.locator("#history-summary")).to_contain_text(f"{expected} prices of eth_usd")
    href = await download.get_attribute("href") or ""
    assert href.startswith("/api/v1/prices/by-date?") and "format=csv" in href
    assert "resolution" not in href

    # So is the "1 h" button's range, though its start drops the seconds' fraction.
    await page.fill("#hist-ticker", "btc_usd")
    await page.click("button[data-range='3600']")
    await expect(chart).to_have_attribute("data-ticker", "btc_usd")
    await expect(chart).to_have_attribute("data-resolution", "ticks")
    assert problems.take() == []
    await context.close()
