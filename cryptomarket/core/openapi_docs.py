"""What `/docs` and `/redoc` show beyond the routes' own signatures.

- `error(...)` and the shared error responses: each documents the `{"detail", "code"}` body with a
  real example, so every route lists its failures the same way.
- `SSE_ROUTE_DOCS`: the decorator options of the stream route (its module is kept apart).
- `install_openapi(app)`: tag descriptions and the three ways to authenticate as security schemes,
  so Swagger UI's "Authorize" button works (it never sends an `Authorization` header parameter).
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import StreamingResponse

from cryptomarket.core.errors import ErrorBody

Responses = dict[int | str, dict[str, Any]]


def error(description: str, code: str, detail: str) -> dict[str, Any]:
    """One documented error response: the ErrorBody model with an example body."""
    return {
        "model": ErrorBody,
        "description": description,
        "content": {"application/json": {"example": {"detail": detail, "code": code}}},
    }


UNAUTHORIZED = error(
    "No credentials, or a session that is unknown, expired or ended.",
    "unauthorized",
    "sign in first: POST /api/v1/sessions, then send the token as a Bearer header or cookie",
)
FORBIDDEN = error(
    "The credentials belong to another user than `user_id`.",
    "forbidden",
    "this session belongs to another user than 'bob'",
)
INVALID = error(
    "A parameter or the body is invalid; the sentence names which and why.",
    "invalid_input",
    "limit: Input should be less than or equal to 10000",
)
INVALID_DATE = error(
    "A parameter is invalid (a date, a limit, a cursor); the sentence names which and why.",
    "invalid_date",
    "start_date 'yesterday' is not a valid date: use YYYY-MM-DD_HH:MM:SS (2024-05-01_09:30:00) "
    "or ISO 8601 (2024-05-01T09:30:00Z)",
)
UNKNOWN_TICKER = error(
    "The ticker is not a Deribit index name, nor an active (or stored) instrument.",
    "unknown_ticker",
    "unknown ticker 'nope_usd'; the supported index names are at /api/v1/tickers",
)
NO_PRICES = error(
    "Unknown ticker, or no price of it is stored yet.",
    "unknown_ticker",
    "unknown ticker 'nope_usd'; the supported index names are at /api/v1/tickers",
)
INDEX_LIST_DOWN = error(
    "Deribit's index list cannot be reached, so the ticker cannot be checked.",
    "unavailable",
    "cannot check ticker 'sol_usdc' now: Deribit's index list is unreachable",
)
DERIBIT_DOWN = error(
    "Deribit cannot be reached or did not answer.",
    "deribit_unreachable",
    "Deribit is unreachable: connection refused",
)

# The `{user_id}` routes: no or wrong credentials, someone else's id, a malformed parameter.
OWNER_ERRORS: Responses = {401: UNAUTHORIZED, 403: FORBIDDEN, 422: INVALID}

STREAM_EXAMPLE = (
    "retry: 3000\n\n"
    "event: connected\n"
    'data: {"user_id":"alice","token":null,"stream":"s1","timer":60,'
    '"subscriptions":[{"ticker":"btc_usd","timer":0}]}\n\n'
    "event: status\n"
    'data: {"upstream":"connected","at":"2026-11-24T07:39:08.147Z"}\n\n'
    "event: price\n"
    "id: btc_usd:1795505951235\n"
    'data: {"ticker":"btc_usd","price":95010.26,"timestamp":1795505951235,'
    '"datetime":"2026-11-24T07:39:11.235Z"}\n\n'
    ": ping\n\n"
)

# Options for the decorator of `/api/v2/sse/connection` (cryptomarket/streaming/endpoints.py):
# `@get_and_post(router, "/api/v2/sse/connection", **SSE_ROUTE_DOCS)`.
SSE_ROUTE_DOCS: dict[str, Any] = {
    "summary": "Open your live price stream (Server-Sent Events)",
    "description": (
        "A `text/event-stream` that a browser `EventSource` reads. Authenticate with the session "
        "(Bearer header or cookie), the key headers, or `?token=` for a cross-origin "
        "`EventSource`.\n\n"
        "Sign in by stream, as the original service did: `X-User-id`, `X-Client-Id` and "
        "`X-Secret-key` for a user id not signed in yet (or with a new key) verify the key with "
        "Deribit once, as `POST /api/v1/sessions` does (same 401, 409, 422, 429 and 503 "
        "answers), then open the stream; the `connected` event carries the new session's token. "
        "Sent together, the three headers win over any other credentials on the request.\n\n"
        "Events, in order:\n\n"
        "- `connected` (first, at once): `{user_id, token, stream, timer, subscriptions: "
        "[{ticker, timer}]}`; `token` is the new session's token when this stream signed in "
        "(null otherwise), `stream` names this stream.\n"
        "- `status`: the upstream state, `connected`, `reconnecting` or `stale`.\n"
        "- `price` with `id: <ticker>:<timestamp>`: `{ticker, price, timestamp, datetime}`, the "
        "latest price of each subscription at once, then every `timer` seconds (0: every tick).\n"
        "- `gap`: `{ticker, from, to}` when ticks were missed and Deribit no longer has them, "
        "or a reconnect's replay leaves them out.\n"
        "- `session_ended`: `{reason}` (`expired`, `signed_out`, `key_changed`), then the stream "
        "ends: open streams are re-checked against their session.\n"
        "- `: ping` comments every 15 s when idle.\n\n"
        "Subscriptions come from `create_order` and `cancel_order`; a change reaches an open "
        "stream at once. A reconnecting client that sends `Last-Event-ID` first gets the ticks "
        "it missed, in publish order, without repeats. Swagger UI cannot show a stream that "
        "never ends: use `curl -N` or an `EventSource`."
    ),
    "response_class": StreamingResponse,
    "responses": {
        200: {
            "description": "The stream: connected, status, price and gap events, ping comments.",
            "content": {"text/event-stream": {"example": STREAM_EXAMPLE}},
        },
        401: UNAUTHORIZED,
        409: error(
            "Sign in by stream: the user_id belongs to another Deribit account.",
            "user_id_taken",
            "user_id 'alice' belongs to another Deribit account; choose another id",
        ),
        422: error(
            "`timer` is not a number of seconds from 0 to 86400 (or a sign-in header is "
            "malformed).",
            "invalid_input",
            "timer: must be a whole number of seconds from 0 to 86400",
        ),
        429: error(
            "The user already holds SSE_MAX_STREAMS_PER_USER streams, or its Deribit account"
            " SSE_MAX_STREAMS_PER_ACCOUNT across its user ids; or, signing in by stream, too "
            "many sign-in attempts (code `too_many_attempts`).",
            "too_many_streams",
            "user 'alice' already has 5 open streams; close one first",
        ),
        503: error(
            "This server holds its maximum of streams (SSE_MAX_STREAMS); or, signing in by "
            "stream, Deribit cannot be reached.",
            "too_many_streams",
            "this server holds its maximum of 10000 streams; retry shortly",
        ),
    },
}

TAGS = [
    {
        "name": "users",
        "description": "Sign in with a Deribit API key, sign out, read your Deribit account data.",
    },
    {
        "name": "market",
        "description": "The original routes: subscribe, unsubscribe, your ticker's history. Each "
        "answers GET and POST and needs your own session.",
    },
    {"name": "stream", "description": "Your live prices as Server-Sent Events."},
    {
        "name": "prices",
        "description": "Stored price history, the index names and the instruments. Public.",
    },
    {"name": "operations", "description": "Health and Prometheus metrics, for the operator."},
]

SECURITY_SCHEMES = {
    "session": {
        "type": "http",
        "scheme": "bearer",
        "description": "The token from POST /api/v1/sessions.",
    },
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "cm_session",
        "description": "Set by POST /api/v1/sessions (HttpOnly); browsers send it themselves.",
    },
    "userId": {"type": "apiKey", "in": "header", "name": "X-User-id"},
    "clientId": {"type": "apiKey", "in": "header", "name": "X-Client-Id"},
    "secretKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Secret-key",
        "description": "The original key headers: X-User-id, X-Client-Id and X-Secret-key "
        "together, checked against the stored key.",
    },
}
# Any one of these: a session (header or cookie), or all three key headers.
SECURITY: list[dict[str, list[str]]] = [
    {"session": []},
    {"sessionCookie": []},
    {"userId": [], "clientId": [], "secretKey": []},
]


def install_openapi(app: FastAPI) -> None:
    """Build the schema once, with tags and security schemes, when it is first asked for."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
                tags=TAGS,
            )
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    _declare_security(operation)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _declare_security(operation: dict[str, Any]) -> None:
    """The `Authorization` header parameter becomes the security requirement it stands for."""
    parameters = operation.get("parameters", [])
    kept = [p for p in parameters if not (p["in"] == "header" and p["name"] == "authorization")]
    if len(kept) != len(parameters):
        operation["security"] = SECURITY
        if kept:
            operation["parameters"] = kept
        else:
            del operation["parameters"]
