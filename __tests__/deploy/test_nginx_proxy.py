"""The project's nginx configuration, run by a real nginx in front of a real replica.

The replica is the whole service (uvicorn, SQLite, the Deribit simulator) on a free loopback
port; nginx runs nginx/ as deployed with only its addresses changed (nginx_run.py), with TLS
turned on. Everything a client does here goes through nginx: signing in, subscribing, the
stream. What it shows: the first price of a `timer=0` subscription comes through in under a
second and the next ones keep coming one by one (nothing buffers or compresses the stream); the
replica sees the real client and scheme however a client lies in its X-Forwarded-* headers; a
session passed as `?token=` reaches no log; nginx's own errors answer in the API's JSON shape.
"""

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Request
from fastapi.routing import APIRoute

from __tests__.deploy.nginx_run import (
    RunningNginx,
    enable_https_redirect,
    for_loopback,
    lay_out,
    project_files,
    running_nginx,
)
from __tests__.servers import free_port
from __tests__.service import KEYS, Service, running_service
from __tests__.sse import open_stream
from cryptomarket.deribit.simulator import Simulator

SSE_PATH = "/api/v2/sse/connection"
ECHO_PATH = "/deploy-test/echo"
FIRST_EVENT_WITHIN = 1.0  # seconds from opening the stream to its first price


@dataclass
class Proxied:
    service: Service
    nginx: RunningNginx
    tls: ssl.SSLContext

    def client(self, *, https: bool = False, **kwargs: Any) -> httpx.AsyncClient:
        """A client of nginx (never of the replica directly)."""
        url = self.nginx.https_url if https else self.nginx.http_url
        assert url is not None
        return httpx.AsyncClient(base_url=url, verify=self.tls, timeout=10, **kwargs)


def _add_echo_route(app: Any) -> None:
    """A route on the replica that shows what reached it: headers, client, scheme, HTTP version.

    Inserted first in the running app's routes, which Starlette reads on every request."""

    async def echo(request: Request) -> dict[str, Any]:
        return {
            "headers": dict(request.headers),
            "client": request.client.host if request.client else None,
            "scheme": request.url.scheme,
            "http_version": request.scope["http_version"],
        }

    app.router.routes.insert(0, APIRoute(ECHO_PATH, echo, methods=["GET"]))


@pytest.fixture
async def proxied(
    nginx: Path, simulator: Simulator, sqlite_url: str, tmp_path: Path, certs: Path
) -> AsyncIterator[Proxied]:
    async with running_service(simulator, sqlite_url) as service:
        _add_echo_route(service.app)
        upstream = service.base_url.removeprefix("http://")
        http_port, https_port = free_port(), free_port()
        files = for_loopback(
            project_files(tls=True), upstream=upstream, http_port=http_port, https_port=https_port
        )
        lay_out(tmp_path / "nginx", files, certs)
        context = ssl.create_default_context(cafile=certs / "fullchain.pem")
        with running_nginx(tmp_path / "nginx", http_port, https_port) as running:
            yield Proxied(service, running, context)


async def _sign_in(client: httpx.AsyncClient, user_id: str) -> str:
    client_id, secret = KEYS[user_id]
    response = await client.post(
        "/api/v1/sessions",
        json={"user_id": user_id, "client_id": client_id, "client_secret": secret},
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


async def test_the_first_price_comes_through_nginx_within_a_second(proxied: Proxied) -> None:
    async with proxied.client() as client:
        token = await _sign_in(client, "alice")
        client.headers["Authorization"] = f"Bearer {token}"
        subscribed = await client.get("/api/v1/market/alice/create_order/btc_usd?timer=0")
        assert subscribed.status_code == 201, subscribed.text

        loop = asyncio.get_running_loop()
        opened = loop.time()
        async with open_stream(client, SSE_PATH) as stream:
            assert stream.response.status_code == 200
            first = await stream.until("price", timeout=FIRST_EVENT_WITHIN)
            elapsed = loop.time() - opened
            assert elapsed < FIRST_EVENT_WITHIN, f"first price after {elapsed:.3f} s"
            assert first.data["ticker"] == "btc_usd"
            assert stream.response.headers["content-type"].startswith("text/event-stream")
            # httpx asked for gzip; the stream comes uncompressed all the same.
            assert "gzip" in client.headers["accept-encoding"]
            assert "content-encoding" not in stream.response.headers
            # And the next ticks (every 50 ms from the simulator) come one by one, not in a
            # buffered batch: each within a second of the one before.
            for _ in range(5):
                await stream.until("price", timeout=FIRST_EVENT_WITHIN)


async def test_the_replica_sees_the_real_client_and_scheme(proxied: Proxied) -> None:
    lies = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    async with proxied.client() as client:
        plain = (await client.get(ECHO_PATH, headers=lies)).json()
    assert plain["headers"]["x-forwarded-for"] == "127.0.0.1"  # nginx's view, not the lie
    assert plain["headers"]["x-forwarded-proto"] == "http"
    assert plain["headers"]["x-forwarded-host"] == "127.0.0.1"
    assert plain["headers"]["host"] == proxied.nginx.http_url.removeprefix("http://")
    assert plain["client"] == "127.0.0.1"
    assert plain["scheme"] == "http"
    # HTTP/1.1 on a kept-alive connection to the replica: no `Connection: close`.
    assert plain["http_version"] == "1.1"
    assert plain["headers"].get("connection", "") != "close"

    async with proxied.client(https=True) as client:
        secure = (await client.get(ECHO_PATH)).json()
    assert secure["headers"]["x-forwarded-proto"] == "https"
    assert secure["scheme"] == "https"  # uvicorn applied the header: the app knows it is HTTPS


async def test_a_stream_token_reaches_no_log(proxied: Proxied) -> None:
    async with proxied.client() as client:
        token = await _sign_in(client, "alice")
        async with open_stream(client, f"{SSE_PATH}?timer=5&token={token}") as stream:
            assert stream.response.status_code == 200
            await stream.until("connected", timeout=5)
    line = f"GET {SSE_PATH}?timer=5&token=[redacted] HTTP/1.1"
    access_log = proxied.nginx.wait_for_log(line)
    assert line in access_log
    for name, text in proxied.nginx.logs().items():
        assert token not in text, f"the session token is in nginx's {name}"


async def test_limits_and_nginx_errors_answer_like_the_api(proxied: Proxied) -> None:
    async with proxied.client() as client:
        too_large = await client.post(
            "/api/v1/sessions",
            content=b"{" + b" " * (100 * 1024) + b"}",
            headers={"content-type": "application/json"},
        )
        assert too_large.status_code == 413
        assert too_large.json()["code"] == "request_too_large"
        health = await client.get("/nginx-health")
        assert (health.status_code, health.text) == (200, "ok\n")
        # An error of the API itself passes through untouched.
        missing = await client.get("/api/v1/prices?ticker=nope_usd")
        assert missing.status_code == 404
        assert missing.json()["code"] == "unknown_ticker"


async def test_a_history_flood_gets_429_from_nginx_and_the_stream_still_opens(
    proxied: Proxied,
) -> None:
    """Issue #15, defect 2: one address sending history requests in parallel gets 429 (JSON,
    Retry-After) past its burst; its live stream is not limited."""
    async with proxied.client() as client:
        token = await _sign_in(client, "alice")
        flood = await asyncio.gather(
            *(client.get("/api/v1/prices?ticker=btc_usd&limit=10") for _ in range(40))
        )
        statuses = [response.status_code for response in flood]
        assert set(statuses) == {200, 429}, statuses
        assert statuses.count(200) <= 16  # at most the burst (plus what refilled meanwhile)
        refused = next(response for response in flood if response.status_code == 429)
        assert refused.json()["code"] == "too_many_requests"
        assert refused.headers["retry-after"] == "1"

        client.headers["Authorization"] = f"Bearer {token}"
        subscribed = await client.get("/api/v1/market/alice/create_order/btc_usd?timer=0")
        assert subscribed.status_code == 201, subscribed.text
        async with open_stream(client, SSE_PATH) as stream:
            assert stream.response.status_code == 200
            await stream.until("price", timeout=5)


def test_no_replica_gives_a_json_error_and_logs_no_token(nginx: Path, tmp_path: Path) -> None:
    """With the replicas gone, clients get JSON with Retry-After; nginx's error log, which
    quotes request lines, gets no stream token (the stream's location logs only critical
    errors) while it does log the other failures."""
    http_port = free_port()
    files = for_loopback(project_files(), upstream=f"127.0.0.1:{free_port()}", http_port=http_port)
    lay_out(tmp_path, files)
    with (
        running_nginx(tmp_path, http_port) as running,
        httpx.Client(base_url=running.http_url, timeout=10) as client,
    ):
        down = client.get("/api/v1/tickers?token=visible-elsewhere")
        assert down.status_code == 502
        assert down.json()["code"] == "service_unavailable"
        assert down.headers["retry-after"] == "5"
        stream = client.get(f"{SSE_PATH}?token=secret-stream-token")
        assert stream.status_code == 502
        assert stream.json()["code"] == "service_unavailable"
        running.wait_for_log("/api/v2/sse/connection?token=[redacted]")
        logs = running.logs()
    assert "visible-elsewhere" in logs["error.log"]  # the error log is written...
    for name, text in logs.items():  # ...but never with the stream's token
        assert "secret-stream-token" not in text, name


def test_the_https_redirect_when_turned_on_spares_the_health_check(
    nginx: Path, tmp_path: Path
) -> None:
    http_port = free_port()
    files = for_loopback(
        enable_https_redirect(project_files()), upstream="127.0.0.1:9", http_port=http_port
    )
    lay_out(tmp_path, files)
    with (
        running_nginx(tmp_path, http_port) as running,
        httpx.Client(base_url=running.http_url, timeout=10) as client,
    ):
        redirected = client.get("/api/v1/tickers?x=1")
        assert redirected.status_code == 308
        assert redirected.headers["location"] == "https://127.0.0.1/api/v1/tickers?x=1"
        assert client.get("/nginx-health").status_code == 200
