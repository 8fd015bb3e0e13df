"""Hostile input against a live server: oversized headers, bodies, query strings and path
segments, bytes that are not UTF-8, JSON of the wrong types or nested without end, and a flood of
sign-ins with wrong secrets. Every answer is a clear 4xx: the app's `{"detail", "code"}` where the
app answers, uvicorn's own 400/431 where the request never reaches it; never a 5xx or a
traceback."""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from __tests__.databases import fresh_database_url
from __tests__.service import Service, running_service
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.kit import tarpit

SECRET = "sim-alice-secret"


def refused(response: httpx.Response, *statuses: int) -> dict[str, str]:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"detail", "code"}, body
    assert "Traceback" not in body["detail"]
    return dict(body)


async def raw(service: Service, request: bytes, *, hang_up_ok: bool = False) -> tuple[int, bytes]:
    """Send bytes as they are (no client library cleaning them) and read the whole answer.
    `hang_up_ok`: a reset before any answer counts as a refusal (status 0): the server stopped
    reading a request it would not take, and the kernel may drop its 400 with the reset."""
    address = urlsplit(service.base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    answer = b""
    try:
        async with asyncio.timeout(10):
            try:
                writer.write(request)
                await writer.drain()
            except ConnectionResetError:
                pass  # the server answered and hung up before reading it all
            try:
                while chunk := await reader.read(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
    finally:
        writer.close()
    if not answer and hang_up_ok:
        return 0, b""
    assert answer, "the server hung up without an answer"
    status = int(answer.split(b" ", 2)[1])
    return status, answer


def get(target: bytes, *headers: bytes) -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1", b"Host: test", b"Connection: close", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_oversized_credential_headers_are_422(service: Service) -> None:
    token = await service.sign_in("alice")
    big = "x" * 5_000
    client = service.client_for(token)
    for headers in (
        {"Authorization": f"Bearer {big}"},
        {"X-User-id": "alice", "X-Client-Id": big, "X-Secret-key": SECRET},
    ):
        for path in ("/api/v1/users/alice", "/api/v2/sse/connection"):
            refused(await service.client.get(path, headers=headers), 422)
    async with client.stream(
        "GET", "/api/v2/sse/connection", headers={"Last-Event-ID": big}
    ) as stream:
        await stream.aread()
        refused(stream, 422)
    await client.aclose()


async def test_a_header_flood_is_refused_by_the_server_itself(service: Service) -> None:
    flood = [b"X-Pad-%d: %s" % (n, b"y" * 1_000) for n in range(200)]  # ~200 KB of headers
    for target in (b"/health", b"/api/v2/sse/connection"):
        status, answer = await raw(service, get(target, *flood), hang_up_ok=True)
        assert status in (0, 400, 431), answer[:200]
        assert b"Traceback" not in answer
    one_huge = b"Authorization: Bearer " + b"z" * 100_000
    status, answer = await raw(service, get(b"/api/v1/users/alice", one_huge), hang_up_ok=True)
    assert status in (0, 400, 431), answer[:200]
    assert (await service.client.get("/health")).status_code == 200  # and it still serves


async def test_oversized_query_strings_and_path_segments(service: Service) -> None:
    client = service.client_for(await service.sign_in("alice"))
    long = "a" * 3_000
    refused(await client.get("/api/v1/prices", params={"ticker": long}), 422)
    refused(await client.get("/api/v1/prices/latest", params={"ticker": long}), 422)
    refused(
        await client.get(
            "/api/v1/prices/by-date", params={"ticker": "btc_usd", "start_date": long}
        ),
        422,
    )
    refused(await client.get("/api/v1/prices", params={"ticker": "btc_usd", "cursor": long}), 422)
    refused(await client.get("/api/v2/sse/connection", params={"timer": "9" * 3_000}), 422)
    refused(await client.get(f"/api/v1/market/alice/create_order/{long}"), 422)
    refused(await client.get(f"/api/v1/users/{long}"), 422)
    refused(await client.get(f"/api/v1/market/{long}/cancel_all_orders"), 422)
    refused(await client.get(f"/{long}/{long}"), 404)
    # Beyond what the server reads as a request line at all: its own 400 or 414, no 5xx.
    request = get(b"/api/v1/prices?ticker=" + b"b" * 200_000)
    status, answer = await raw(service, request, hang_up_ok=True)
    assert status == 0 or 400 <= status < 500, answer[:200]
    await client.aclose()


async def test_bytes_that_are_not_utf8_in_path_query_and_body(service: Service) -> None:
    token = await service.sign_in("alice")
    auth = f"Authorization: Bearer {token}".encode()
    for target, headers in (
        (b"/api/v1/users/%FF%FE", [auth]),
        (b"/api/v1/market/alice/create_order/%C3%28", [auth]),
        (b"/api/v1/prices?ticker=%FF", []),
        (b"/api/v1/prices/by-date?ticker=btc_usd&start_date=%ED%A0%80", []),
        (b"/api/v2/sse/connection?timer=%FF", [auth]),
        (b"/api/v2/sse/connection?token=%FF%FF", []),  # the only credential: not a session
    ):
        status, answer = await raw(service, get(target, *headers))
        assert status in (401, 403, 404, 422), (target, answer[:300])
        body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
        assert set(body) == {"detail", "code"}, (target, body)
    for target in (b"/api/v1/users/\xff\xfe", b"/api/v1/prices?ticker=\xff"):  # raw, unencoded
        status, answer = await raw(service, get(target, auth))
        assert 400 <= status < 500, (target, answer[:300])
        assert b"Traceback" not in answer
    body = b'{"user_id": "alice", "client_id": "sim-alice", "client_secret": "\xff\xfe"}'
    response = await service.client.post(
        "/api/v1/sessions", content=body, headers={"Content-Type": "application/json"}
    )
    assert refused(response, 422)["code"] == "invalid_input"


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": 1, "client_id": "sim-alice", "client_secret": SECRET},
        {"user_id": "alice", "client_id": ["sim-alice"], "client_secret": SECRET},
        {"user_id": "alice", "client_id": "sim-alice", "client_secret": {"v": SECRET}},
        {"user_id": None, "client_id": None, "client_secret": None},
        {"user_id": True, "client_id": 1.5, "client_secret": 7},
        [],
        "alice",
        None,
        12,
    ],
)
async def test_json_of_the_wrong_types_is_422(service: Service, body: object) -> None:
    response = await service.client.post("/api/v1/sessions", json=body)
    assert SECRET not in response.text
    refused(response, 422)


async def test_wrong_types_in_the_timer_body_are_422(service: Service) -> None:
    client = service.client_for(await service.sign_in("alice"))
    for body in ({"timer": "soon"}, {"timer": -1}, {"timer": [1]}, {"timer": 10**30}, [1], "x"):
        path = "/api/v1/market/alice/create_order/btc_usd"
        refused(await client.post(path, json=body), 422)
    await client.aclose()


@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_deeply_nested_json_is_422(service: Service, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    for body in (
        nested,
        '{"user_id": ' + nested + ', "client_id": "a", "client_secret": "b"}',
        '{"a":' * depth + "1" + "}" * depth,
    ):
        response = await service.client.post(
            "/api/v1/sessions", content=body, headers={"Content-Type": "application/json"}
        )
        refused(response, 413, 422)
    client = service.client_for(await service.sign_in("alice"))
    response = await client.post(
        "/api/v1/market/alice/create_order/btc_usd",
        content='{"timer": ' + nested + "}",
        headers={"Content-Type": "application/json"},
    )
    refused(response, 413, 422)
    await client.aclose()


async def test_an_oversized_body_is_refused(service: Service) -> None:
    huge = {"user_id": "alice", "client_id": "sim-alice", "client_secret": "s" * 5_000_000}
    before = service.simulator.calls["public/auth"]
    refused(await service.client.post("/api/v1/sessions", json=huge), 413)
    assert service.simulator.calls["public/auth"] == before  # refused before Deribit is asked

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"user_id": "alice", "client_id": "sim-alice", "client_secret": "'
        for _ in range(100):
            yield b"s" * 10_000
        yield b'"}'

    chunked = await service.client.post(
        "/api/v1/sessions", content=chunks(), headers={"Content-Type": "application/json"}
    )
    refused(chunked, 413)
    assert chunked.json()["code"] == "too_large"
    assert service.simulator.calls["public/auth"] == before


async def test_a_flood_of_wrong_secrets_is_429_per_client(service: Service) -> None:
    """Wrong secrets from one address for ever new client ids: the address runs out of attempts,
    Deribit sees no more than the burst, and another client address is not affected."""
    before = service.simulator.calls["public/auth"]
    statuses, took = [], []
    loop = asyncio.get_running_loop()
    for n in range(7):
        body = {"user_id": "mallory", "client_id": f"guess-{n}", "client_secret": "wrong"}
        started = loop.time()
        statuses.append((await service.client.post("/api/v1/sessions", json=body)).status_code)
        took.append(loop.time() - started)
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    assert took[6] >= tarpit.HOLD * 0.9  # back before its Retry-After: its refusal was held
    assert service.simulator.calls["public/auth"] - before <= 5
    limited = await service.client.post(
        "/api/v1/sessions",
        json={"user_id": "alice", "client_id": "sim-alice", "client_secret": SECRET},
    )
    assert refused(limited, 429)["code"] == "too_many_attempts"  # the address, whatever the key


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database_url(request, request.param, tmp_path) as url:
        yield url


async def test_a_malformed_ticker_in_a_market_path_is_422_on_either_database(
    simulator: Simulator, database_url: str
) -> None:
    # PostgreSQL refuses a NUL in text outright: it must never get as far as a query.
    async with running_service(simulator, database_url) as service:
        client = service.client_for(await service.sign_in("alice"))
        for ticker in ("%00", "btc%00usd", "btc%20usd", "%E2%82%AC", "BTC-PERPETUAL%0A"):
            for route in ("create_order", "cancel_order"):
                answer = refused(await client.get(f"/api/v1/market/alice/{route}/{ticker}"), 422)
                assert answer["code"] == "invalid_input", (route, ticker, answer)
        await client.aclose()
