"""JSON-RPC frames as Deribit writes them (reference §2), and the checks of request params.

Errors are raised as the shared `DeribitError` classes; the messages are those of reference §9.
"""

import json
import math
import time
from typing import Any, Final

from cryptomarket.deribit.errors import DeribitError, InvalidParams, Unauthorized

NO_ID: Final = object()  # the request carried no id, so neither does the answer

Params = dict[str, Any]


def now_us() -> int:
    return time.time_ns() // 1000


def response(request_id: object, us_in: int, *, result: Any = None, error: Any = None) -> str:
    """A response envelope; `error` (a DeribitError) replaces `result` when given."""
    frame: dict[str, Any] = {"jsonrpc": "2.0"}
    if request_id is not NO_ID:
        frame["id"] = request_id
    if isinstance(error, DeribitError):
        body: dict[str, Any] = {"message": error.message, "code": error.code}
        if error.data is not None:
            body["data"] = error.data
        frame["error"] = body
    else:
        frame["result"] = result
    us_out = now_us()
    frame.update(testnet=True, usIn=us_in, usOut=us_out, usDiff=us_out - us_in)
    return json.dumps(frame, separators=(",", ":"))


def subscription(channel: str, data: dict[str, Any]) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "method": "subscription", "params": {"channel": channel, "data": data}},
        separators=(",", ":"),
    )


def heartbeat(kind: str) -> str:
    return json.dumps(
        {"jsonrpc": "2.0", "method": "heartbeat", "params": {"type": kind}}, separators=(",", ":")
    )


def invalid_params(reason: str, param: str) -> InvalidParams:
    return InvalidParams("Invalid params", data={"reason": reason, "param": param})


def unauthorized(reason: str | None = "invalid_token") -> Unauthorized:
    return Unauthorized("unauthorized", data=None if reason is None else {"reason": reason})


def required(params: Params, name: str) -> Any:
    if params.get(name) is None:
        raise invalid_params("value is required", name)
    return params[name]


def string(params: Params, name: str, default: str | None = None) -> str:
    """A string param; required unless a default is given."""
    value = required(params, name) if default is None else params.get(name, default)
    if not isinstance(value, str):
        raise invalid_params("invalid format", name)
    return value


def boolean(params: Params, name: str, default: bool = False) -> bool:
    value = params.get(name, default)
    # HTTP GET callers send "true"/"false"; accept those spellings too.
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise invalid_params("invalid format", name)
    return value


def number(params: Params, name: str, *, minimum: float = 0.0) -> float:
    """A required finite number, at least `minimum`."""
    value = required(params, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid_params("invalid format", name)
    if value < minimum:
        raise invalid_params(f"must be at least {minimum:g}", name)
    return float(value)


def channels(params: Params) -> list[str]:
    value = required(params, "channels")
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid_params("invalid format", "channels")
    return value
