"""The whole service, as a user meets it: migrated database, simulator, uvicorn, an HTTP client."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from __tests__.app_server import app_settings, serving
from cryptomarket.app import create_app
from cryptomarket.core.config import Settings
from cryptomarket.core.db import urls_for
from cryptomarket.core.migrate import upgrade
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.distributed.rate_limit import PREFIX as BUCKETS

KEYS = {"alice": ("sim-alice", "sim-alice-secret"), "bob": ("sim-bob", "sim-bob-secret")}


@dataclass
class Service:
    base_url: str
    client: httpx.AsyncClient
    simulator: Simulator
    settings: Settings
    app: Any

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    async def sign_in(self, user_id: str, key_of: str | None = None) -> str:
        client_id, secret = KEYS[key_of or user_id]
        response = await self.client.post(
            "/api/v1/sessions",
            json={"user_id": user_id, "client_id": client_id, "client_secret": secret},
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    def client_for(self, token: str) -> httpx.AsyncClient:
        """A client of its own (no shared cookies) with a Bearer token."""
        return httpx.AsyncClient(
            base_url=self.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )


async def forget_sign_in_buckets(redis_url: str) -> None:
    """Each test's service is a deployment of its own, but the session's Redis outlives it: the
    sign-in buckets of 127.0.0.1 (every test's address) must not carry over into the next test.
    Replicas of one test start before anyone signs in, so clearing at each start is safe."""
    client = Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=f"{BUCKETS}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def running_service(
    simulator: Simulator, database_url: str, **settings: Any
) -> AsyncIterator[Service]:
    upgrade(urls_for(database_url).sync_url)
    if settings.get("REDIS_URL"):
        await forget_sign_in_buckets(settings["REDIS_URL"])
    settings.setdefault("TRACKED_TICKERS", "btc_usd")
    chosen = app_settings(DATABASE_URL=database_url, DERIBIT_WS_URL=simulator.url, **settings)
    app = create_app(chosen)
    async with (
        serving(app) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        yield Service(base_url, client, simulator, chosen, app)
