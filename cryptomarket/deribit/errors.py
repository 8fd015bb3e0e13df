"""Typed exceptions for Deribit errors (reference section 9) and for the transport below them."""

from typing import Any, ClassVar


class DeribitError(Exception):
    """An error answered by Deribit: `{"code", "message", "data"}`."""

    code: ClassVar[int] = 10001
    # Codes after which the same request may succeed later (the set nautilus retries, reference §9).
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, code: int | None = None, data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data
        if code is not None:
            self.code = code  # type: ignore[misc]  # instance-level code for unmapped errors

    @property
    def reason(self) -> str:
        """Deribit's own words: the message plus `data.reason` (or a bare string `data`)."""
        if isinstance(self.data, dict) and self.data.get("reason"):
            param = self.data.get("param")
            return f"{self.message}: {self.data['reason']}" + (f" ({param})" if param else "")
        if isinstance(self.data, str) and self.data:
            return f"{self.message}: {self.data}"
        return self.message

    def __str__(self) -> str:
        return f"Deribit error {self.code}: {self.reason}"


class AuthorizationRequired(DeribitError):
    code = 10000


class TooManyRequests(DeribitError):
    code = 10028
    retryable = True


class RetryLater(DeribitError):
    code = 10040
    retryable = True


class BadRequest(DeribitError):
    code = 11050


class Maintenance(DeribitError):
    code = 11051
    retryable = True


class InternalServerError(DeribitError):
    code = 11094
    retryable = True


class LoginOverLimit(DeribitError):
    code = 12003


class InvalidCredentials(DeribitError):
    code = 13004


class Unauthorized(DeribitError):
    code = 13009


class Forbidden(DeribitError):
    code = 13021


class InstrumentNotFound(DeribitError):
    code = 13020  # not_found: what `public/ticker` answers of an expired name is unverified


class TemporarilyUnavailable(DeribitError):
    code = 13028
    retryable = True


class RawNotForUnauthorized(DeribitError):
    """A `raw` ticker channel asked for on a connection that has not authenticated."""

    code = 13778


class DeribitTimedOut(DeribitError):
    code = 13888
    retryable = True


class RequestTooLarge(DeribitError):
    code = -32600


class MethodNotFound(DeribitError):
    code = -32601


class InvalidParams(DeribitError):
    code = -32602


class ParseError(DeribitError):
    code = -32700


class MissingParams(DeribitError):
    code = -32000


ERRORS_BY_CODE: dict[int, type[DeribitError]] = {
    cls.code: cls
    for cls in (
        AuthorizationRequired,
        TooManyRequests,
        RetryLater,
        BadRequest,
        Maintenance,
        InternalServerError,
        LoginOverLimit,
        InvalidCredentials,
        Unauthorized,
        Forbidden,
        InstrumentNotFound,
        TemporarilyUnavailable,
        DeribitTimedOut,
        RequestTooLarge,
        MethodNotFound,
        InvalidParams,
        ParseError,
        MissingParams,
    )
}
RETRYABLE_CODES = frozenset({10028, 10040, 10041, 10047, 10066, 11051, 11094, 13028, 13888})


def error_from_payload(error: dict[str, Any]) -> DeribitError:
    """Build the typed exception for a JSON-RPC `error` object."""
    code = int(error.get("code", 10001))
    message = str(error.get("message", "error"))
    cls = ERRORS_BY_CODE.get(code)
    if cls is not None:
        return cls(message, data=error.get("data"))
    exc = DeribitError(message, code=code, data=error.get("data"))
    exc.retryable = code in RETRYABLE_CODES  # type: ignore[misc]
    return exc


class DeribitTransportError(Exception):
    """The request could not be completed on the wire; Deribit never answered it."""


class ConnectionLost(DeribitTransportError):
    """The socket closed while the request was pending or before it could be sent."""


class RequestTimeout(DeribitTransportError):
    """No answer within the request's timeout."""


class CreditTimeout(DeribitTransportError):
    """The client-side credit budget could not grant the request within its bound."""


class ConnectionClosed(DeribitTransportError):
    """The connection was closed by its owner, or gave up for good (say, on a revoked key)."""
