"""The dashboard with instruments, in a real headless Chromium: the instrument list to search, an
instrument's bid / ask / mark and funding live, its expiry, and the Deribit account's data."""

from playwright.async_api import Browser, expect

from __tests__.service import Service
from __tests__.web.conftest import PageProblems, screenshot
from __tests__.web.test_dashboard import row, sign_in, subscribe, updates_reach


async def test_instruments_and_the_account_on_the_dashboard(
    browser: Browser, web_service: Service
) -> None:
    service = web_service
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, timezone_id="UTC", locale="en-US"
    )
    page = await context.new_page()
    problems = PageProblems(page)
    await page.goto(service.base_url + "/")
    await sign_in(page, "alice", "sim-alice", "sim-alice-secret")
    await expect(page.locator("#stream")).to_have_attribute("data-state", "live")

    # The user's Deribit data: the account and its balances per currency.
    await expect(page.locator("#account-card")).to_be_visible()
    await expect(page.locator("#account-summary")).to_contain_text("Account 1001 (main)")
    await expect(page.locator("#account-summary")).to_contain_text("alice@example.com")
    await expect(page.locator('#balances tr[data-currency="BTC"]')).to_have_count(1)

    # The ticker input searches index names and instruments alike.
    await expect(page.locator('#ticker-list option[value="BTC-PERPETUAL"]')).to_have_count(1)
    await expect(page.locator('#ticker-list option[value="btc_usd"]')).to_have_count(1)
    listed = await service.client.get("/api/v1/instruments?currency=BTC&kind=option")
    option = listed.json()["instruments"][0]["instrument_name"]
    await expect(page.locator(f'#ticker-list option[value="{option}"]')).to_have_count(1)

    # A perpetual, every update: bid < ask, its mark and its funding.
    await subscribe(page, "BTC-PERPETUAL", 0)
    await updates_reach(page, "BTC-PERPETUAL", 5)
    perpetual = row(page, "BTC-PERPETUAL")
    book = perpetual.locator(".sub-book")
    await expect(book).to_be_visible()
    await expect(book).to_contain_text("bid ")
    await expect(book).to_contain_text("mark ")
    await expect(book).to_contain_text("funding ")
    bid, ask = await perpetual.evaluate("r => [Number(r.dataset.bid), Number(r.dataset.ask)]")
    assert 0 < bid < ask

    # An option: its implied volatility; then it expires, and its row goes with a word in the log.
    await subscribe(page, option, 0)
    await updates_reach(page, option, 2)
    await expect(row(page, option).locator(".sub-book")).to_contain_text("IV ")
    await screenshot(page, "dashboard-instruments.png", full_page=True)
    assert service.simulator.expire_instrument(option)
    await expect(row(page, option)).to_have_count(0)
    await expect(page.locator("#log")).to_contain_text(f"{option} expired, delivered at")
    await expect(row(page, "BTC-PERPETUAL")).to_have_count(1)  # the rest goes on
    assert problems.take() == []
    await context.close()
