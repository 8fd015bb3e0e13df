"""A plain `new EventSource(url + '?token=...')` on a page of another origin, in real Chromium.

Two small pages serve the same script from two other loopback ports: one origin is in
`CORS_ORIGINS` and receives `price` events; the other is not, and its browser refuses the stream.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlencode

import pytest
from playwright.async_api import Browser, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from __tests__.app_server import serving
from __tests__.service import running_service
from __tests__.web.conftest import TICK_INTERVAL, screenshot
from cryptomarket.deribit.simulator import Simulator

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>another origin</title>
<script defer src="/probe.js"></script></head>
<body data-state="connecting"><ol id="prices" data-count="0"></ol></body></html>
"""

# Only the standard API: the stream URL with the token, and listeners.
PROBE = """
const params = new URLSearchParams(location.search);
const url = params.get("api") + "/api/v2/sse/connection?token=" + params.get("token");
const source = new EventSource(url);
const list = document.getElementById("prices");
source.addEventListener("open", () => { document.body.dataset.state = "open"; });
source.addEventListener("connected", (event) => {
  document.body.dataset.user = JSON.parse(event.data).user_id;
});
source.addEventListener("price", (event) => {
  const item = document.createElement("li");
  item.textContent = event.data;
  list.append(item);
  list.dataset.count = String(list.children.length);
});
source.addEventListener("error", () => {
  if (source.readyState === EventSource.CLOSED) document.body.dataset.state = "closed";
});
"""


def probe_site() -> Starlette:
    async def page(_request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def script(_request: Request) -> Response:
        return Response(PROBE, media_type="text/javascript")

    return Starlette(routes=[Route("/", page), Route("/probe.js", script)])


@pytest.fixture
async def origins() -> AsyncIterator[tuple[str, str]]:
    """Two pages on other origins: (allowed, not allowed)."""
    async with AsyncExitStack() as stack:
        allowed = await stack.enter_async_context(serving(probe_site()))
        other = await stack.enter_async_context(serving(probe_site()))
        yield allowed, other


async def test_event_source_from_another_origin(
    browser: Browser,
    origins: tuple[str, str],
    simulator_factory: Callable[..., Awaitable[Simulator]],
    sqlite_url: str,
) -> None:
    allowed, other = origins
    simulator = await simulator_factory(tick_interval=TICK_INTERVAL)
    async with running_service(simulator, sqlite_url, CORS_ORIGINS=allowed) as service:
        token = await service.sign_in("bob")
        async with service.client_for(token) as bob:
            subscribed = await bob.get("/api/v1/market/bob/create_order/btc_usd?timer=0")
            assert subscribed.status_code == 201, subscribed.text
        query = urlencode({"api": service.base_url, "token": token})

        page = await browser.new_page()
        await page.goto(f"{allowed}/?{query}")
        await expect(page.locator("body")).to_have_attribute("data-user", "bob")
        await page.wait_for_function(
            "() => Number(document.getElementById('prices').dataset.count) >= 3"
        )
        received: list[dict[str, Any]] = await page.evaluate(
            "() => [...document.querySelectorAll('#prices li')]"
            ".map((item) => JSON.parse(item.textContent))"
        )
        sent = simulator.history("btc_usd")
        for price in received[:3]:
            assert price["ticker"] == "btc_usd"
            assert (price["timestamp"], price["price"]) in sent
        await screenshot(page, "cross-origin-event-source.png")

        # The same page and token from an origin not in CORS_ORIGINS: the browser refuses it.
        refused = await browser.new_page()
        await refused.goto(f"{other}/?{query}")
        await expect(refused.locator("body")).to_have_attribute("data-state", "closed")
        await expect(refused.locator("#prices")).to_have_attribute("data-count", "0")
        await expect(refused.locator("body")).not_to_have_attribute("data-user", "bob")
