"""Security headers on every kind of response: JSON, errors, HTML pages, the docs, the stream."""

import re

import httpx
from fastapi.responses import HTMLResponse

from __tests__.service import Service, running_service
from __tests__.sse import open_stream
from cryptomarket.core.security_headers import JSON_CSP, script_hashes
from cryptomarket.deribit.simulator import Simulator

ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


def assert_hardened(response: httpx.Response, csp: str | None = JSON_CSP) -> None:
    for name, value in ALWAYS.items():
        assert response.headers.get(name) == value, (response.url, name, response.headers)
    policy = response.headers.get("content-security-policy")
    assert policy is not None, response.url
    assert "frame-ancestors 'none'" in policy
    if csp is not None:
        assert policy == csp, (response.url, policy)
    assert "strict-transport-security" not in response.headers  # plain http here


async def test_json_and_error_responses_carry_the_headers(service: Service) -> None:
    token = await service.sign_in("alice")
    client = service.client_for(token)
    responses = [
        await client.get("/health"),
        await client.get("/api/v1/tickers"),
        await client.get("/api/v1/users/alice"),
        await client.get("/api/v1/users/bob"),  # 403
        await client.get("/api/v1/prices", params={"ticker": "BAD TICKER"}),  # 422
        await client.get("/nowhere"),  # 404 from the router
        await client.put("/api/v1/tickers"),  # 405
        await client.get("/openapi.json"),
        await client.get("/metrics"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 200, 403, 422, 404, 405, 200, 200]
    for response in responses:
        assert_hardened(response)
    await client.aclose()


async def test_the_stream_and_its_refusals_carry_the_headers(service: Service) -> None:
    token = await service.sign_in("alice")
    client = service.client_for(token)
    async with open_stream(client) as stream:
        assert stream.response.status_code == 200
        assert_hardened(stream.response)
        await stream.until("connected")  # headers added, body still streamed event by event
    refused = await httpx.AsyncClient(base_url=service.base_url).get("/api/v2/sse/connection")
    assert refused.status_code == 401
    assert_hardened(refused)
    await client.aclose()


async def test_hsts_only_when_the_request_came_over_https(service: Service) -> None:
    behind_tls = await service.client.get("/health", headers={"X-Forwarded-Proto": "https"})
    assert behind_tls.headers["strict-transport-security"].startswith("max-age=31536000")
    plain = await service.client.get("/health", headers={"X-Forwarded-Proto": "http"})
    assert "strict-transport-security" not in plain.headers
    stream = await service.client.get(
        "/api/v2/sse/connection", headers={"X-Forwarded-Proto": "https"}
    )
    assert stream.status_code == 401
    assert "strict-transport-security" in stream.headers


def sources(policy: str, directive: str) -> list[str]:
    for part in policy.split(";"):
        name, *values = part.split()
        if name == directive:
            return values
    return []


def allowed(policy: str, directive: str, url: str) -> bool:
    listed = sources(policy, directive) or sources(policy, "default-src")
    origin = re.match(r"https?://[^/]+", url)
    return (url.startswith("/") and "'self'" in listed) or bool(origin and origin[0] in listed)


async def test_the_docs_pages_may_load_exactly_what_they_use(service: Service) -> None:
    for path in ("/docs", "/redoc"):
        page = await service.client.get(path)
        assert page.status_code == 200
        assert_hardened(page, csp=None)
        policy = page.headers["content-security-policy"]
        assert "'unsafe-inline'" not in sources(policy, "script-src")
        assert "'unsafe-eval'" not in policy
        html = page.content
        for url in re.findall(rb'<script src="([^"]+)"', html):
            assert allowed(policy, "script-src", url.decode()), (path, url)
        for url in re.findall(rb'<link[^>]*rel="stylesheet"[^>]*>', html):
            href = re.search(rb'href="([^"]+)"', url)
            assert href and allowed(policy, "style-src", href[1].decode()), (path, url)
        for url in re.findall(rb'rel="shortcut icon" href="([^"]+)"', html):
            assert allowed(policy, "img-src", url.decode()), (path, url)
        for inline in script_hashes(html):  # the page's own bootstrap script, by its hash
            assert inline in sources(policy, "script-src"), (path, inline)
        assert sources(policy, "connect-src") == ["'self'"]  # the schema, and "Try it out"
    swagger = (await service.client.get("/docs")).headers["content-security-policy"]
    assert len([s for s in sources(swagger, "script-src") if s.startswith("'sha256-")]) == 1


async def test_html_of_our_own_gets_the_page_policy(simulator: Simulator, sqlite_url: str) -> None:
    """An HTML response outside the docs (the dashboard's) may use its own assets only."""
    async with running_service(simulator, sqlite_url) as service:

        @service.app.get("/__page", include_in_schema=False)
        async def page() -> HTMLResponse:
            return HTMLResponse("<!doctype html><script src='/static/app.js'></script>")

        response = await service.client.get("/__page")
        assert response.status_code == 200
        policy = response.headers["content-security-policy"]
        assert sources(policy, "default-src") == ["'self'"]
        assert sources(policy, "img-src") == ["'self'", "data:"]
        assert sources(policy, "frame-ancestors") == ["'none'"]
        assert "'unsafe-inline'" not in policy
