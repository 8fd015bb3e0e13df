"""The page and its files over HTTP: content types, cache headers, and nothing else served."""

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from __tests__.app_server import app_settings
from cryptomarket.app import create_app
from cryptomarket.web.endpoints import _load_assets, _page

LINKED = re.compile(r'(?:src|href)="(/static/[^"?]+)\?v=([0-9a-f]{16})"')
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The application without its lifespan: these routes need nothing started."""
    app = create_app(app_settings(DATABASE_URL=sqlite_url))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_page_is_html_with_a_strict_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert policy.startswith("default-src 'self';")
    assert "unsafe-inline" not in policy
    html = response.text
    # Nothing inline: every script has a src and no body, no style or on* attributes.
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert len(scripts) == 2
    assert all('src="/static/' in attributes and body == "" for attributes, body in scripts)
    assert "<style" not in html
    assert not re.search(r"\s(style|on[a-z]+)=", html)

    again = await client.get("/", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


async def test_linked_files_are_typed_and_cached_by_version(client: httpx.AsyncClient) -> None:
    html = (await client.get("/")).text
    linked = LINKED.findall(html)
    assert {path for path, _ in linked} == {
        "/static/favicon.svg",
        "/static/vendor/uplot/uPlot.min.css",
        "/static/style.css",
        "/static/vendor/uplot/uPlot.iife.min.js",
        "/static/app.js",
    }
    for path, version in linked:
        pinned = await client.get(path, params={"v": version})
        assert pinned.status_code == 200, path
        assert pinned.headers["content-type"] == TYPES[path[path.rindex(".") :]]
        assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert pinned.headers["etag"] == f'"{version}"'
        for unpinned in ({}, {"v": "0" * 16}):
            response = await client.get(path, params=unpinned)
            assert response.headers["cache-control"] == "no-cache"
            assert response.content == pinned.content
        cached = await client.get(path, headers={"If-None-Match": f'W/"x", "{version}"'})
        assert cached.status_code == 304


async def test_the_chart_library_comes_with_its_licence(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/vendor/uplot/LICENSE")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert "MIT License" in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/static/nope.js",
        "/static/index.html",  # the page lives at / only
        "/static/../endpoints.py",
        "/static/%2e%2e/endpoints.py",
        "/static/..%2F__init__.py",
        "/static/vendor",
        "/static/",
    ],
)
async def test_anything_else_is_a_json_404(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_bad_parameters_are_422_not_500(client: httpx.AsyncClient) -> None:
    response = await client.get("/static/app.js", params={"v": "x" * 65})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"
    assert (await client.post("/")).status_code == 405


async def test_page_and_files_stay_out_of_the_api_schema(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert "/" not in paths
    assert not [path for path in paths if path.startswith("/static")]


def test_without_its_files_the_page_is_missing_not_the_application(tmp_path: Path) -> None:
    """A wheel built without the static files must not stop the API from importing."""
    assert _load_assets(tmp_path / "absent") == {}
    assert _page(tmp_path / "absent", {}) is None
    (tmp_path / "index.html").write_text('<script src="/static/app.js"></script>')
    (tmp_path / "app.js").write_text("'use strict';")
    assets = _load_assets(tmp_path)
    assert list(assets) == ["app.js"]
    page = _page(tmp_path, assets)
    assert page is not None
    version = assets["app.js"].version
    assert page.body == f'<script src="/static/app.js?v={version}"></script>'.encode()
