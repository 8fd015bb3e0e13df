"""Errors a client sees: typed classes that carry their status, and the handlers that render them.

Every error body is `{"detail": "<a sentence>", "code": "<machine_code>"}`. Nothing else reaches
a client: an unexpected failure is logged with its traceback and answered with a plain 500.
"""

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from cryptomarket.core.logging import REQUEST_ID
from cryptomarket.kit.addresses import address_key
from cryptomarket.kit.tarpit import Tarpit

logger = logging.getLogger("cryptomarket.errors")


class ErrorBody(BaseModel):
    detail: str
    code: str


class AppError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, detail: str, *, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class NotAuthenticated(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class TooMany(AppError):
    """429; `retry_after`: the seconds after which the same request may pass (a rate limit),
    sent as Retry-After. None where waiting alone does not help (a count to close first)."""

    status_code = 429
    code = "too_many_requests"

    def __init__(
        self, detail: str, *, code: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail, code=code)
        self.retry_after = retry_after


class InvalidInput(AppError):
    status_code = 422
    code = "invalid_input"


class Unavailable(AppError):
    status_code = 503
    code = "unavailable"


HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_input",
    429: "too_many_requests",
    503: "unavailable",
}


BODY_UNREADABLE = "There was an error parsing the body"  # FastAPI's detail for an unreadable body


def error_response(status: int, detail: str, code: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, **extra)


def app_error_response(error: AppError) -> JSONResponse:
    """An AppError's answer, with the headers its status asks for."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status_code == 401 else {}
    if isinstance(error, TooMany) and error.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
    return error_response(error.status_code, error.detail, error.code, headers=headers)


def describe_validation(error: RequestValidationError) -> str:
    """One sentence naming each bad parameter, e.g. "limit: must be at most 10000"."""
    parts = []
    for item in error.errors():
        location = [
            str(part) for part in item.get("loc", ()) if part not in ("query", "path", "body")
        ]
        name = ".".join(location) or "request"
        message = str(item.get("msg", "is invalid")).removeprefix("Value error, ")
        parts.append(f"{name}: {message}")
    return "; ".join(parts) or "the request is invalid"


def install_error_handlers(app: FastAPI, tarpit: Tarpit | None = None) -> None:
    """`tarpit`: where 429s wait for clients that come back before their Retry-After."""

    @app.exception_handler(AppError)
    async def app_error(request: Request, error: AppError) -> JSONResponse:
        if tarpit is not None and isinstance(error, TooMany):
            client = address_key(request.client.host if request.client else "unknown")
            await tarpit.refuse(client, error.retry_after)
        return app_error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, describe_validation(error), "invalid_input")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400 and error.detail == BODY_UNREADABLE:
            # FastAPI's answer to a body that is not JSON text (bytes that are not UTF-8, say):
            # invalid input like any other, 422 as documented.
            return error_response(422, "body: is not valid JSON text (UTF-8)", "invalid_input")
        code = HTTP_CODES.get(error.status_code, "error")
        return error_response(
            error.status_code, str(error.detail), code, headers=getattr(error, "headers", None)
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        # Answered outside the request-id middleware: the id is added here, so the client can
        # quote it and the operator find the logged traceback.
        request_id = REQUEST_ID.get()
        return error_response(
            500,
            "Something went wrong on our side.",
            "internal_error",
            headers={"X-Request-ID": request_id} if request_id else None,
        )
