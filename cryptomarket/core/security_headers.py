"""Security headers on every response: what a browser may do with what this service sends.

A pure ASGI middleware: it edits `http.response.start` only, so a streamed response (the SSE
stream) passes through chunk by chunk, never buffered. The one exception is the docs pages
(`/docs`, `/redoc`): small HTML pages whose inline bootstrap script is allowed by its hash, so
their body is read before the headers go out.

- Every response: `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
  `X-Frame-Options: DENY`, and a `Content-Security-Policy`:
  - JSON, event streams, text: `default-src 'none'; frame-ancestors 'none'` (nothing to run).
  - HTML of our own (the dashboard): its own scripts, styles, images and API calls only.
  - The docs pages: exactly the CDN assets FastAPI's Swagger UI and ReDoc pages load, and the
    page's inline scripts by their SHA-256 (no `'unsafe-inline'` for scripts).
- `Strict-Transport-Security`, only when the request came over https (directly, or per a proxy's
  `X-Forwarded-Proto`): over plain http the header means nothing and would mislead.
"""

import base64
import hashlib
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
CDN = "https://cdn.jsdelivr.net"
# What FastAPI's Swagger UI and ReDoc pages load: the bundles and CSS from jsDelivr, ReDoc's
# Google fonts, the FastAPI favicon, the schema from here; ReDoc runs a worker from a blob and
# both inject inline styles. Swagger UI's validator badge (validator.swagger.io) is left out.
DOCS_CSP = (
    "default-src 'none'; script-src {scripts}; "
    f"style-src {CDN} https://fonts.googleapis.com 'unsafe-inline'; "
    "font-src https://fonts.gstatic.com; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)

_CSP = b"content-security-policy"
_ALWAYS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def script_hashes(html: bytes) -> list[str]:
    """CSP sources for each inline `<script>` of a page: `'sha256-<base64>'`."""
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(html)
    ]


def docs_policy(html: bytes) -> str:
    return DOCS_CSP.format(scripts=" ".join([CDN, *script_hashes(html)]))


def came_over_https(scope: Scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    for key, value in scope.get("headers", ()):
        if key == b"x-forwarded-proto":
            return bool(value.split(b",")[0].strip().lower() == b"https")
    return False


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, docs_paths: Iterable[str] = ()) -> None:
        self.app = app
        self.docs_paths = tuple(path for path in docs_paths if path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = came_over_https(scope)
        path: str = scope["path"]
        if any(path == docs or path.startswith(docs + "/") for docs in self.docs_paths):
            await self._docs(scope, receive, send, https)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = _with_headers(message, https, None)
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _docs(self, scope: Scope, receive: Receive, send: Send, https: bool) -> None:
        """A docs page: its body is read whole, so its inline scripts can be allowed by hash."""
        start: Message | None = None
        body: list[bytes] = []

        async def collect(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            whole = b"".join(body)
            await send(_with_headers(start, https, docs_policy(whole)))
            await send({"type": "http.response.body", "body": whole})

        await self.app(scope, receive, collect)


def secure_start(start: Message, scope: Scope) -> Message:
    """A response start with this module's headers, for an app served outside the middleware
    (the SSE stream): the same headers the middleware would add."""
    return _with_headers(start, came_over_https(scope), None)


def _with_headers(start: Message, https: bool, policy: str | None) -> Message:
    headers: list[tuple[bytes, bytes]] = list(start.get("headers", ()))
    present = {key.lower() for key, _ in headers}
    for key, value in _ALWAYS:
        if key not in present:
            headers.append((key, value))
    if _CSP not in present:
        if policy is None:
            policy = PAGE_CSP if _is_html(headers) else JSON_CSP
        headers.append((_CSP, policy.encode()))
    if https:
        headers.append((b"strict-transport-security", HSTS.encode()))
    return {**start, "headers": headers}


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        key.lower() == b"content-type" and value.lower().startswith(b"text/html")
        for key, value in headers
    )
