"""`sim/*` control methods: steer a running simulator over its own socket (SPEC §8).

They answer "ok", are never charged credits, and act on the other connections, never the caller's.
"""

import asyncio
import logging

from cryptomarket.deribit.errors import (
    Forbidden,
    LoginOverLimit,
    Maintenance,
    TemporarilyUnavailable,
    TooManyRequests,
)
from cryptomarket.deribit.simulator import rpc
from cryptomarket.deribit.simulator.instrument_market import EXPIRED_ANSWERS
from cryptomarket.deribit.simulator.market import check_chart_spacing
from cryptomarket.deribit.simulator.methods import index_name
from cryptomarket.deribit.simulator.state import Call, Handler, InjectedError, now_ms

log = logging.getLogger("cryptomarket.simulator")


def _seconds(call: Call, name: str = "seconds") -> float:
    return rpc.number(call.params, name, minimum=0.0)


def _until(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


def set_price(call: Call) -> str:
    name = index_name(call)
    price = rpc.number(call.params, "price")
    if price <= 0:
        raise rpc.invalid_params("must be positive", "price")
    call.state.market.set_price(name, price)
    log.info("sim: next %s tick will be %s", name, price)
    return "ok"


def pause_ticks(call: Call) -> str:
    seconds = _seconds(call)
    call.state.paused_until = _until(seconds)
    log.info("sim: ticks paused for %gs", seconds)
    return "ok"


def drop_connections(call: Call) -> str:
    others = call.others
    for session in others:
        session.abort()
    log.info("sim: dropped %d other connection(s)", len(others))
    return "ok"


def refuse_connections(call: Call) -> str:
    seconds = _seconds(call)
    call.state.refuse_until = _until(seconds)
    log.info("sim: refusing new connections for %gs", seconds)
    return "ok"


def go_silent(call: Call) -> str:
    seconds = _seconds(call)
    others = call.others
    for session in others:
        session.silent_until = _until(seconds)
    log.info("sim: %d other connection(s) silent for %gs", len(others), seconds)
    return "ok"


def set_latency(call: Call) -> str:
    ms = rpc.number(call.params, "ms", minimum=0.0)
    # Optional: each reply waits up to jitter_ms more, so replies may overtake one another.
    jitter_ms = (
        rpc.number(call.params, "jitter_ms", minimum=0.0) if "jitter_ms" in call.params else 0.0
    )
    call.state.latency = ms / 1000
    call.state.reply_jitter = jitter_ms / 1000
    log.info("sim: outgoing latency %gms, reply jitter %gms", ms, jitter_ms)
    return "ok"


# The errors a test may make the simulator answer, with Deribit's own messages (reference §9).
INJECTABLE_ERRORS: dict[int, str] = {
    TooManyRequests.code: "too_many_requests",
    Maintenance.code: "system_maintenance",
    LoginOverLimit.code: "login_over_limit",  # answered to public/auth by a throttled account
    TemporarilyUnavailable.code: "temporarily_unavailable",
    # A key without the scope a method needs (account:read for the summaries): the simulator
    # grants every scope, so only this way can a test meet it.
    Forbidden.code: "forbidden",
}


def fail_requests(call: Call) -> str:
    """Answer every request (or those of `methods`) with Deribit error `code` for `seconds`.

    10028 goes as Deribit's does: the answer, then the session is terminated. 11051 leaves the
    socket open, as maintenance does. Heartbeat `public/test` calls are refused like any other,
    so a connection that cannot answer its `test_request` is closed as Deribit would.
    """
    code = rpc.number(call.params, "code")
    if code not in INJECTABLE_ERRORS:
        known = ", ".join(str(c) for c in INJECTABLE_ERRORS)
        raise rpc.invalid_params(f"must be one of {known}", "code")
    seconds = _seconds(call)
    methods = call.params.get("methods")
    if methods is not None and (
        not isinstance(methods, list) or not all(isinstance(m, str) and m for m in methods)
    ):
        raise rpc.invalid_params("must be a list of method names", "methods")
    call.state.injected = InjectedError(
        code=int(code),
        message=INJECTABLE_ERRORS[int(code)],
        until=_until(seconds),
        methods=frozenset(methods) if methods is not None else None,
    )
    log.info("sim: answering %s with error %d for %gs", methods or "every request", code, seconds)
    return "ok"


def set_chart_spacing(call: Call) -> str:
    """Seconds between the points of the `1h` chart; 0 serves every live tick."""
    seconds = _seconds(call)
    try:
        check_chart_spacing(round(seconds * 1000))
    except ValueError:
        raise rpc.invalid_params("must be 0 or at least 1", "seconds") from None
    call.state.market.chart_spacing_ms = round(seconds * 1000)
    log.info("sim: 1h chart points every %gs", seconds)
    return "ok"


def _timestamp(call: Call, name: str) -> int | None:
    value = call.params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise rpc.invalid_params("must be an integer timestamp in ms", name)
    return value


def produced(call: Call) -> dict[str, object]:
    """Ground truth: every tick produced for the index with since < timestamp <= until, whether
    or not anyone was subscribed; `complete` is false when part of that span is forgotten.
    With `instrument_name`: every frame its `100ms` channel sent, as [timestamp, mark_price]."""
    since, until = _timestamp(call, "since"), _timestamp(call, "until")
    if "instrument_name" in call.params:
        instrument = rpc.string(call.params, "instrument_name")
        found = call.state.instruments.produced(instrument, since, until)
        ticks, complete = found if found is not None else ([], True)
        return {"instrument_name": instrument, "ticks": ticks, "complete": complete}
    name = index_name(call)
    ticks, complete = call.state.market.produced(name, since, until)
    return {"index_name": name, "ticks": ticks, "complete": complete}


def expire_instrument(call: Call) -> str:
    """The instrument expires now: its last two frames go out, then its channels fall silent.
    `ticker_answer`: what `public/ticker` answers of it after (EXPIRED_ANSWERS; Deribit's is
    unverified): its final frame (default), the frame before it, 13020 or -32602."""
    name = rpc.string(call.params, "instrument_name")
    answer = rpc.string(call.params, "ticker_answer", "final")
    if answer not in EXPIRED_ANSWERS:
        raise rpc.invalid_params(f"must be one of {', '.join(EXPIRED_ANSWERS)}", "ticker_answer")
    if not call.state.instruments.expire(name, now_ms(), answer):
        raise rpc.invalid_params("instrument not found", "instrument_name")
    log.info("sim: %s expires now", name)
    return "ok"


CONTROL_METHODS: dict[str, Handler] = {
    "sim/produced": produced,
    "sim/expire_instrument": expire_instrument,
    "sim/set_chart_spacing": set_chart_spacing,
    "sim/fail_requests": fail_requests,
    "sim/set_price": set_price,
    "sim/pause_ticks": pause_ticks,
    "sim/drop_connections": drop_connections,
    "sim/refuse_connections": refuse_connections,
    "sim/go_silent": go_silent,
    "sim/set_latency": set_latency,
}
