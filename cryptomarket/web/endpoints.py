"""`GET /` and `/static/...`: the dashboard page and its files, from this package's `static/`.

The files are read once at import; they are few and small. Each is served with an explicit content
type, an ETag (a 304 when the browser has it) and a cache policy:

- the page itself is always revalidated (`no-cache`), and carries a strict Content-Security-Policy
  (nothing inline, nothing from elsewhere);
- the page links every file as `/static/<name>?v=<hash of its content>`; a request naming the
  current hash may be cached for a year (`immutable`), since a changed file gets a new URL. Any
  other request for the file (no or an old `v`) is revalidated.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from cryptomarket.core.errors import NotFound, Unavailable

router = APIRouter(include_in_schema=False)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    "": "text/plain; charset=utf-8",  # LICENSE files
}
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    version: str  # a short hash of the content

    @property
    def etag(self) -> str:
        return f'"{self.version}"'

    @classmethod
    def of(cls, body: bytes, content_type: str) -> "Asset":
        return cls(body, content_type, hashlib.sha256(body).hexdigest()[:16])


def _load_assets(root: Path) -> dict[str, Asset]:
    """Every servable file under `root` but the page, by its path relative to `root`."""
    assets = {}
    for path in sorted(root.rglob("*")):
        content_type = CONTENT_TYPES.get(path.suffix)
        if path.is_file() and content_type is not None and path.name != "index.html":
            assets[path.relative_to(root).as_posix()] = Asset.of(path.read_bytes(), content_type)
    return assets


def _page(root: Path, assets: dict[str, Asset]) -> Asset | None:
    """index.html with each link to a static file pinned to that file's current version; None
    when the files are not installed (a wheel built without them), so the API still starts."""
    try:
        html = (root / "index.html").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    for name, asset in assets.items():
        link = f'"{STATIC_PREFIX}{name}"'
        html = html.replace(link, f'"{STATIC_PREFIX}{name}?v={asset.version}"')
    return Asset.of(html.encode(), CONTENT_TYPES[".html"])


ASSETS = _load_assets(STATIC_DIR)
PAGE = _page(STATIC_DIR, ASSETS)


def _answer(
    request: Request, asset: Asset, cache_control: str, headers: dict[str, str] | None = None
) -> Response:
    common = {
        "ETag": asset.etag,
        "Cache-Control": cache_control,
        "X-Content-Type-Options": "nosniff",
        **(headers or {}),
    }
    if _matches(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=common)
    return Response(asset.body, media_type=asset.content_type, headers=common)


def _matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = {part.strip().removeprefix("W/") for part in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


@router.api_route("/", methods=["GET", "HEAD"])
async def dashboard(request: Request) -> Response:
    """The dashboard page."""
    if PAGE is None:
        raise Unavailable("the dashboard's files are not installed here", code="no_dashboard")
    return _answer(request, PAGE, REVALIDATE, PAGE_HEADERS)


@router.api_route(STATIC_PREFIX + "{name:path}", methods=["GET", "HEAD"])
async def static_file(
    request: Request,
    name: str,
    v: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """A file the page loads; only the files of `static/` exist here, by their exact names."""
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound(f"no such file: {STATIC_PREFIX}{name[:100]}")
    return _answer(request, asset, IMMUTABLE if v == asset.version else REVALIDATE)
