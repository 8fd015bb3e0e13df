"""CryptoMarket.postman_collection.json: in step with the routes, and green under newman.

newman comes from `scripts/ensure-newman` (a prerequisite of `make test`) in .tools/node/.
"""

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from __tests__.app_server import app_settings
from __tests__.helpers import eventually, eventually_async
from __tests__.service import Service
from cryptomarket.app import create_app

ROOT = Path(__file__).parents[2]
COLLECTION = ROOT / "CryptoMarket.postman_collection.json"
NEWMAN = ROOT / ".tools" / "node" / "node_modules" / ".bin" / "newman"
SCHEMA_V21 = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
VARIABLES = {"baseUrl", "user_id", "client_id", "client_secret", "token", "ticker"}
FLOW = [  # the order a user goes through, as (method, path) of the Flow folder
    ("POST", "/api/v1/sessions"),
    ("GET", "/api/v1/market/{user_id}/create_order/{ticker}"),
    ("POST", "/api/v1/market/{user_id}/create_order/{ticker}"),
    ("GET", "/api/v2/sse/connection"),
    ("GET", "/api/v1/prices/latest"),
    ("GET", "/api/v1/prices/by-date"),
    ("GET", "/api/v1/prices/candles"),
    ("GET", "/api/v1/prices/by-date"),  # as CSV
    ("GET", "/api/v1/prices"),
    ("GET", "/api/v1/prices"),
    ("GET", "/api/v1/market/{user_id}/get_order/{ticker}"),
    ("GET", "/api/v1/users/{user_id}"),
    ("GET", "/api/v1/market/{user_id}/cancel_order/{ticker}"),
    ("GET", "/api/v1/market/{user_id}/cancel_all_orders"),
    ("DELETE", "/api/v1/sessions/current"),
    ("GET", "/api/v1/users/{user_id}"),
]


def collection() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(COLLECTION.read_text())
    return loaded


def requests_of(node: dict[str, Any]) -> list[dict[str, Any]]:
    """Every request under a folder (or the collection), in order."""
    found = []
    for item in node.get("item", []):
        found.extend(requests_of(item) if "item" in item else [item["request"]])
    return found


def route_of(request: dict[str, Any], paths: list[str]) -> tuple[str, str] | None:
    """The OpenAPI (method, path) a collection request calls, or None."""
    raw = request["url"]["raw"]
    assert raw.startswith("{{baseUrl}}/"), raw
    path = raw.removeprefix("{{baseUrl}}").split("?")[0]
    for template in paths:
        pattern = re.sub(r"\{[^/]+\}", "[^/]+", template)
        if re.fullmatch(pattern, path):
            return request["method"], template
    return None


@pytest.fixture(scope="module")
def openapi_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    database = tmp_path_factory.mktemp("postman") / "db.sqlite3"
    schema = create_app(app_settings(DATABASE_URL=f"sqlite:///{database}")).openapi()
    paths: dict[str, dict[str, Any]] = schema["paths"]
    return paths


def test_the_collection_is_postman_v21_with_the_variables() -> None:
    data = collection()
    assert data["info"]["schema"] == SCHEMA_V21
    assert data["info"]["name"] == "CryptoMarket"
    assert {variable["key"] for variable in data["variable"]} >= VARIABLES
    assert data["auth"]["type"] == "bearer"
    assert data["auth"]["bearer"][0]["value"] == "{{token}}"


def test_every_route_is_in_the_collection(openapi_paths: dict[str, dict[str, Any]]) -> None:
    """A route added to the app without a request in the collection fails here."""
    templates = sorted(openapi_paths, key=len, reverse=True)  # the most specific first
    called = {route_of(request, templates) for request in requests_of(collection())}
    routes = {(method.upper(), path) for path, item in openapi_paths.items() for method in item}
    assert not routes - called, f"missing from the collection: {sorted(routes - called)}"
    assert None not in called, "a request calls no route of the app"


def test_the_flow_goes_in_the_users_order(openapi_paths: dict[str, dict[str, Any]]) -> None:
    templates = sorted(openapi_paths, key=len, reverse=True)
    flow = next(item for item in collection()["item"] if item["name"] == "Flow")
    assert [route_of(request, templates) for request in requests_of(flow)] == FLOW
    sign_in_tests = "\n".join(flow["item"][0]["event"][0]["script"]["exec"])
    assert 'pm.collectionVariables.set("token", body.token)' in sign_in_tests


async def end_streams_as_they_open(service: Service, newman: "asyncio.subprocess.Process") -> int:
    """The stream requests last until the server ends them: end each one once it is open, as a
    server shutdown does, so newman gets the whole response. Returns how many were ended."""
    hub = service.runtime.hub
    ended = 0
    while newman.returncode is None:
        if not hub.open_streams:
            await asyncio.sleep(0.01)  # a condition to poll: the hub has no event for it
            continue
        hub.close_all()
        ended += 1
        await eventually(lambda: not hub.open_streams, what="the ended stream forgotten")
    return ended


async def test_newman_runs_the_collection_green(service: Service, tmp_path: Path) -> None:
    assert NEWMAN.exists(), "newman is missing: run scripts/ensure-newman (make test does)"

    async def enough_prices() -> bool:  # the flow pages through at least three stored prices
        response = await service.client.get("/api/v1/prices?ticker=btc_usd&limit=3")
        return response.status_code == 200 and len(response.json()["items"]) == 3

    await eventually_async(enough_prices, what="three prices stored")
    report = tmp_path / "newman.json"
    newman = await asyncio.create_subprocess_exec(
        str(NEWMAN),
        "run",
        str(COLLECTION),
        "--env-var",
        f"baseUrl={service.base_url}",
        "--timeout-request",
        "20000",
        "--reporters",
        "cli,json",
        "--reporter-json-export",
        str(report),
        "--color",
        "off",
        "--disable-unicode",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    closer = asyncio.create_task(end_streams_as_they_open(service, newman))
    async with asyncio.timeout(90):
        output, _ = await newman.communicate()
    ended = await closer
    text = output.decode(errors="replace")
    assert newman.returncode == 0, text
    run = json.loads(report.read_text())["run"]
    stats = run["stats"]
    assert run["failures"] == [], text
    assert stats["requests"]["total"] == len(requests_of(collection()))
    assert stats["requests"]["failed"] == 0
    assert stats["assertions"]["failed"] == 0
    assert stats["assertions"]["total"] >= stats["requests"]["total"]  # every request checks
    assert ended == 3  # the GET and the POST stream requests, and the sign-in by stream
