"""Request ids: one per HTTP request, on its response and on every log line made for it.

A pure ASGI middleware (it only adds a header to `http.response.start`, so streamed responses
pass through untouched, chunk by chunk). A sane `X-Request-ID` from the client or a proxy is kept;
anything else is replaced with a new id, so a client cannot inject text into headers or logs.
"""

import re
import uuid
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cryptomarket.core.logging import REQUEST_ID

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()
# Letters, digits and a few separators, as ids from proxies and tracing tools look; 8-128 long.
_SANE = re.compile(r"[A-Za-z0-9._:+/=-]{8,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def chosen_request_id(scope: Scope) -> str:
    """The id already chosen for this request, else its own id when it is sane, else a new one."""
    chosen = scope.get("state", {}).get("request_id")
    if isinstance(chosen, str):
        return chosen
    for key, value in scope.get("headers", ()):
        if key == _HEADER_KEY:
            text = value.decode("latin-1")
            return text if _SANE.fullmatch(text) else new_request_id()
    return new_request_id()


def take_request_id(scope: Scope) -> str:
    """Choose the request's id and note it in its scope, where a later look keeps it."""
    request_id = chosen_request_id(scope)
    state: MutableMapping[str, Any] = scope.setdefault("state", {})
    state["request_id"] = request_id
    return request_id


def id_header(request_id: str) -> tuple[bytes, bytes]:
    return (_HEADER_KEY, request_id.encode())


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = take_request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (key, value) for key, value in message.get("headers", ()) if key != _HEADER_KEY
                ]
                headers.append(id_header(request_id))
                message = {**message, "headers": headers}
            await send(message)

        token = REQUEST_ID.set(request_id)
        await self.app(scope, receive, send_with_id)
        # Reset only on success: when the app raised, the error handler outside this middleware
        # still logs (and answers) for this request, with its id.
        REQUEST_ID.reset(token)
