"""From a received frame to its answer: envelope checks, credits, the handler, error mapping."""

import asyncio
import json
import logging

from cryptomarket.deribit.errors import (
    BadRequest,
    DeribitError,
    InternalServerError,
    MethodNotFound,
    RequestTooLarge,
    TooManyRequests,
    error_from_payload,
)
from cryptomarket.deribit.simulator import rpc
from cryptomarket.deribit.simulator.auth_methods import AUTH_METHODS
from cryptomarket.deribit.simulator.control import CONTROL_METHODS
from cryptomarket.deribit.simulator.inspect import INSPECT_METHODS
from cryptomarket.deribit.simulator.methods import METHODS
from cryptomarket.deribit.simulator.session import Session
from cryptomarket.deribit.simulator.state import NO_REPLY, Call, Handler, SimState

log = logging.getLogger("cryptomarket.simulator")

HANDLERS: dict[str, Handler] = {**AUTH_METHODS, **METHODS, **CONTROL_METHODS, **INSPECT_METHODS}
MAX_FRAME_BYTES = 32 * 1024  # reference §2
# Deribit terminates the session after 10028; its close code is UNVERIFIED (reference §9).
TOO_MANY_REQUESTS_CLOSE = (1008, "too_many_requests")


def handle_frame(state: SimState, session: Session, frame: str | bytes) -> None:
    us_in = rpc.now_us()
    if session.closing:
        return
    raw = frame.encode() if isinstance(frame, str) else frame
    if len(raw) > MAX_FRAME_BYTES:
        _reply(state, session, rpc.NO_ID, us_in, RequestTooLarge("request entity too large"))
        return
    try:
        request = json.loads(raw)
    except ValueError:
        request = None
    request_id = request.get("id") if isinstance(request, dict) else None
    if not isinstance(request, dict) or not _valid_id(request_id):
        # Unparseable (or a batch, which Deribit does not support): no id, the socket stays open.
        _reply(state, session, rpc.NO_ID, us_in, BadRequest("bad_request", data="invalid json"))
        return
    rid = rpc.NO_ID if request_id is None else request_id
    method = request.get("method")
    if not isinstance(method, str) or not method:
        _reply(state, session, rid, us_in, BadRequest("bad_request", data="method is required"))
        return
    method = method.removeprefix("/")  # HTTP-style "/public/auth" is accepted by Deribit
    state.calls[method] += 1
    injected = state.injected
    if (
        injected is not None
        and not method.startswith("sim/")
        and injected.applies(method, asyncio.get_running_loop().time())
    ):
        error = error_from_payload({"code": injected.code, "message": injected.message})
        _reply(state, session, rid, us_in, error)
        if injected.code == TooManyRequests.code:
            log.info("connection %d: injected too_many_requests, closing", session.id)
            session.close(*TOO_MANY_REQUESTS_CLOSE)
        return
    if not method.startswith("sim/") and not state.charge(session, method):
        _reply(state, session, rid, us_in, TooManyRequests("too_many_requests"))
        log.info("connection %d: out of credits, closing", session.id)
        session.close(*TOO_MANY_REQUESTS_CLOSE)
        return
    _reply(state, session, rid, us_in, _call(state, session, method, request.get("params")))


def _call(state: SimState, session: Session, method: str, params: object) -> object:
    """The handler's result, or the DeribitError to answer."""
    handler = HANDLERS.get(method)
    if handler is None:
        return MethodNotFound("Method not found")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        return rpc.invalid_params("invalid format", "params")
    try:
        return handler(Call(state, session, params))
    except DeribitError as exc:
        return exc
    except Exception:
        log.exception("connection %d: %s failed", session.id, method)
        return InternalServerError("internal_server_error")


def _reply(state: SimState, session: Session, rid: object, us_in: int, outcome: object) -> None:
    if outcome is NO_REPLY:
        return
    if isinstance(outcome, DeribitError):
        state.errors[outcome.code] += 1
        session.send(rpc.response(rid, us_in, error=outcome), reply=True)
    else:
        session.send(rpc.response(rid, us_in, result=outcome), reply=True)


def _valid_id(value: object) -> bool:
    return value is None or isinstance(value, str) or type(value) is int
