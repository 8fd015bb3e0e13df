"""Browser fixtures: Debian's headless Chromium driven by Playwright, and the service it visits.

`scripts/ensure-browser` (run by `make test`) installs /usr/bin/chromium when it is missing.
Screenshots go to `test-artifacts/web/` at the top of the repository (ignored by git).
"""

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright, expect

from __tests__.service import Service, running_service
from cryptomarket.deribit.simulator import Simulator

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "web"
TICK_INTERVAL = 0.1  # seconds between simulator ticks: three live prices within a second

expect.set_options(timeout=10_000)


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-browser (make test does)")
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium))
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def web_service(
    simulator_factory: Callable[..., Awaitable[Simulator]], sqlite_url: str
) -> AsyncIterator[Service]:
    """The service on SQLite against a simulator ticking every TICK_INTERVAL seconds."""
    simulator = await simulator_factory(tick_interval=TICK_INTERVAL)
    async with running_service(simulator, sqlite_url) as service:
        yield service


class PageProblems:
    """Errors a page reports: uncaught exceptions and console errors (CSP refusals among them)."""

    def __init__(self, page: Page) -> None:
        self.messages: list[str] = []
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.messages.append(f"console: {message.text}")

    def take(self) -> list[str]:
        """What was reported so far; cleared for what follows."""
        taken, self.messages = self.messages, []
        return taken


async def screenshot(page: Page, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot under test-artifacts/web/ and print where it is."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=full_page)
    print(f"screenshot: {path}")  # where to look, in the test output
    return path


def update_readme_screenshot() -> bool:
    """UPDATE_SCREENSHOT=1 makes the desktop test replace docs/dashboard.png, the README's."""
    return os.environ.get("UPDATE_SCREENSHOT") == "1"
