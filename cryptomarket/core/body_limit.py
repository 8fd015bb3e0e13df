"""A bound on request bodies: this API's bodies are a few hundred bytes of JSON.

Without it, a 5 MB body is read whole before validation refuses it. A declared Content-Length
over the bound is refused before anything is read; a chunked body is counted as it arrives.
nginx's `client_max_body_size` is the first guard in a deployment; this one holds without it.
"""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cryptomarket.core.errors import error_response

MAX_BODY = 64 * 1024
TOO_LARGE = f"the request body is larger than {MAX_BODY // 1024} KiB"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not _digits(declared) or int(declared) > self.max_body):
            await error_response(413, TOO_LARGE, "too_large")(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                raise HTTPException(413, TOO_LARGE)  # rendered by the app's error handlers
            return message

        await self.app(scope, bounded_receive, send)


def _digits(text: str) -> bool:
    """ASCII digits only: other scripts' digits pass str.isdigit() but not int()."""
    return text.isascii() and text.isdigit()
