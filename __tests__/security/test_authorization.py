"""The per-user authorization matrix, generated from the app's own routes (a new route cannot be
left out), secrets absent from every route's answer, and CORS limited to CORS_ORIGINS."""

import re
from typing import Any

import httpx

from __tests__.app_server import app_settings
from __tests__.service import Service, running_service
from __tests__.sse import open_stream
from cryptomarket.app import create_app
from cryptomarket.deribit.simulator import Simulator

SECRET = "sim-alice-secret"
SAMPLES = {"ticker": "btc_usd", "start_date": "2024-01-01"}  # values for other parameters
# Routes anyone may call; every other route must be a {user_id} route or the session routes.
PUBLIC = {
    "/health",
    "/metrics",
    "/api/v1/tickers",
    "/api/v1/instruments",
    "/api/v1/prices",
    "/api/v1/prices/latest",
    "/api/v1/prices/by-date",
    "/api/v1/prices/candles",
    "/api/v1/sessions",  # signing in
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/redoc",
}
SESSION_ONLY = {"/api/v1/sessions/current", "/api/v2/sse/connection"}  # any signed-in caller


def owner_routes(app: Any) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path template, query) of every route with a {user_id}, from the app's own
    schema (built from its routes): each required query parameter gets its sample value."""
    found = []
    for path, item in app.openapi()["paths"].items():
        if "{user_id}" not in path:
            continue
        for method, operation in item.items():
            query = {}
            for param in operation.get("parameters", []):
                if param["in"] == "query" and param.get("required"):
                    assert param["name"] in SAMPLES, f"add a sample value for {param['name']!r}"
                    query[param["name"]] = SAMPLES[param["name"]]
            found.append((method.upper(), path, query))
    return found


def fill(template: str, user_id: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: user_id if m[1] == "user_id" else SAMPLES[m[1]], template)


def error_code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.request.url, response.text)
    body = response.json()
    assert set(body) == {"detail", "code"}, body
    return str(body["code"])


def test_every_route_is_public_owned_or_session_only() -> None:
    app = create_app(app_settings(DATABASE_URL="sqlite:///unused.db"), with_ingest=False)
    paths = set(app.openapi()["paths"]) | {"/openapi.json", "/docs", "/redoc"}
    unclassified = {
        path for path in paths if path not in PUBLIC | SESSION_ONLY and "{user_id}" not in path
    }
    assert not unclassified, f"routes with no authorization rule in this test: {unclassified}"
    assert len(owner_routes(app)) >= 9  # users/{user_id} and the eight market routes


async def test_the_authorization_matrix_of_every_user_route(service: Service) -> None:
    alice = service.client_for(await service.sign_in("alice"))
    bob = service.client_for(await service.sign_in("bob"))
    anonymous = httpx.AsyncClient(base_url=service.base_url, timeout=10)
    seed = {"X-User-id": "alice", "X-Client-Id": "sim-alice", "X-Secret-key": SECRET}
    routes = owner_routes(service.app)
    assert len(routes) >= 9
    answers = []
    for method, template, query in routes:
        path = fill(template, "alice")
        assert error_code(await anonymous.request(method, path, params=query), 401) == (
            "unauthorized"
        )
        assert error_code(await bob.request(method, path, params=query), 403) == "forbidden"
        as_bob_self = await bob.request(method, fill(template, "bob"), params=query)
        assert as_bob_self.status_code not in (401, 403, 500), as_bob_self.text
        for owner in (
            await alice.request(method, path, params=query),
            await anonymous.request(method, path, params=query, headers=seed),
        ):
            assert owner.status_code in (200, 201, 404), (method, path, owner.text)
            if owner.status_code == 404:
                assert owner.json()["code"] == "not_subscribed"  # the route's own answer
            answers.append(owner)
    # Secrets: no answer of any route carries the Deribit secret or a session token.
    alice_token = alice.headers["Authorization"].removeprefix("Bearer ")
    for answer in answers:
        assert SECRET not in answer.text and alice_token not in answer.text, answer.request.url
        assert SECRET not in str(answer.headers)
    async with open_stream(anonymous, headers=seed) as stream:
        connected = await stream.until("connected")
        assert SECRET not in connected.raw_data and alice_token not in connected.raw_data
    for client in (alice, bob, anonymous):
        await client.aclose()


async def test_cors_allows_only_the_configured_origins(
    simulator: Simulator, sqlite_url: str
) -> None:
    allowed, other = "https://app.example", "https://evil.example"
    async with running_service(simulator, sqlite_url, CORS_ORIGINS=allowed) as service:
        token = await service.sign_in("alice")
        client = service.client_for(token)
        for path in ("/api/v1/users/alice", "/api/v2/sse/connection", "/api/v1/tickers"):
            for origin, ok in ((allowed, True), (other, False)):
                preflight = await client.options(
                    path,
                    headers={
                        "Origin": origin,
                        "Access-Control-Request-Method": "GET",
                        "Access-Control-Request-Headers": "Authorization",
                    },
                )
                granted = preflight.headers.get("access-control-allow-origin")
                assert (preflight.status_code == 200) is ok, (path, origin, preflight.text)
                assert granted == (allowed if ok else None), (path, origin)
            simple = await client.get("/api/v1/users/alice", headers={"Origin": other})
            assert "access-control-allow-origin" not in simple.headers
            simple = await client.get("/api/v1/users/alice", headers={"Origin": allowed})
            assert simple.headers["access-control-allow-origin"] == allowed
        async with open_stream(client, headers={"Origin": other}) as stream:  # served up front
            assert stream.response.status_code == 200
            assert "access-control-allow-origin" not in stream.response.headers
        async with open_stream(client, headers={"Origin": allowed}) as stream:
            assert stream.response.headers["access-control-allow-origin"] == allowed
        await client.aclose()


async def test_without_cors_origins_no_origin_is_allowed(service: Service) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = await service.client.options(
        "/api/v1/tickers", headers={**origin, "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    refused = await service.client.get("/api/v2/sse/connection", headers=origin)
    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-origin" not in (await service.client.get("/health")).headers
