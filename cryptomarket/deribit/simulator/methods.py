"""Public and private methods other than auth: market data, subscriptions, heartbeat, account."""

from typing import Any

from cryptomarket.deribit.errors import InternalServerError
from cryptomarket.deribit.simulator import rpc, summary
from cryptomarket.deribit.simulator.auth_methods import private_grant
from cryptomarket.deribit.simulator.indexes import COMBO_ENABLED, INDEX_NAMES
from cryptomarket.deribit.simulator.market import CHART_RANGES
from cryptomarket.deribit.simulator.state import Call, Handler, now_ms

VERSION = "1.2.26"
CHANNEL_PREFIX = "deribit_price_index."


def index_name(call: Call) -> str:
    name = rpc.string(call.params, "index_name")
    if name not in call.state.market:
        raise rpc.invalid_params("invalid index", "index_name")
    return name


def get_time(call: Call) -> int:
    return now_ms()


def hello(call: Call) -> dict[str, str]:
    rpc.string(call.params, "client_name", default="")
    rpc.string(call.params, "client_version", default="")
    return {"version": VERSION}


def test(call: Call) -> dict[str, str]:
    call.session.heartbeat_answered()
    if call.params.get("expected_result") == "exception":
        raise InternalServerError("internal_server_error")
    return {"version": VERSION}


def set_heartbeat(call: Call) -> str:
    interval = rpc.number(call.params, "interval", minimum=call.state.config.min_heartbeat_interval)
    call.session.set_heartbeat(interval)
    return "ok"


def disable_heartbeat(call: Call) -> str:
    call.session.disable_heartbeat()
    return "ok"


def get_index_price(call: Call) -> dict[str, float]:
    price = call.state.market.price(index_name(call))
    return {"index_price": price, "estimated_delivery_price": price}


def get_index_price_names(call: Call) -> list[dict[str, Any]]:
    # Current docs: objects, the two booleans only with extended=true. Whether the plain call
    # still answers bare strings is UNVERIFIED (reference §5.3); objects are the documented shape.
    if not rpc.boolean(call.params, "extended"):
        return [{"name": name} for name in INDEX_NAMES]
    return [
        {
            "name": name,
            "future_combo_creation_enabled": name in COMBO_ENABLED,
            "option_combo_creation_enabled": name in COMBO_ENABLED,
        }
        for name in INDEX_NAMES
    ]


def get_index_chart_data(call: Call) -> list[list[float]]:
    name = index_name(call)
    chart_range = rpc.string(call.params, "range")
    if chart_range not in CHART_RANGES and chart_range != "all":
        raise rpc.invalid_params("invalid range", "range")  # reason text UNVERIFIED
    return call.state.market.chart(name, chart_range, now_ms())


def subscribe(call: Call) -> list[str]:
    """Only known index channels are acknowledged; the rest is dropped silently, like Deribit."""
    accepted = [
        channel
        for channel in dict.fromkeys(rpc.channels(call.params))
        if channel.startswith(CHANNEL_PREFIX)
        and channel.removeprefix(CHANNEL_PREFIX) in call.state.market
    ]
    call.session.subscriptions.update(accepted)
    return accepted


def unsubscribe(call: Call) -> list[str]:
    subscribed = call.session.subscriptions
    removed = [c for c in dict.fromkeys(rpc.channels(call.params)) if c in subscribed]
    subscribed.difference_update(removed)
    return removed


def unsubscribe_all(call: Call) -> str:
    call.session.subscriptions.clear()
    return "ok"


def _private(handler: Handler) -> Handler:
    """The same method behind the token check."""

    def checked(call: Call) -> Any:
        private_grant(call)
        return handler(call)

    return checked


def get_account_summary(call: Call) -> dict[str, Any]:
    account = private_grant(call).account
    currency = rpc.string(call.params, "currency").upper()  # Deribit accepts either case
    if currency not in summary.CURRENCY_SCALES:
        raise rpc.invalid_params("invalid currency", "currency")
    _check_subaccount(call, account.id)
    result = summary.currency_summary(account, currency, call.state.config)
    if rpc.boolean(call.params, "extended"):
        result.update(summary.identity(account))
    return result


def get_account_summaries(call: Call) -> dict[str, Any]:
    account = private_grant(call).account
    _check_subaccount(call, account.id)
    result = summary.identity(account) if rpc.boolean(call.params, "extended") else {}
    result["summaries"] = [
        summary.currency_summary(account, currency, call.state.config)
        for currency in summary.CURRENCIES
    ]
    return result


def _check_subaccount(call: Call, own_id: int) -> None:
    # Accounts here have no subaccounts of their own: only the caller's own id is valid.
    value = call.params.get("subaccount_id")
    if value is not None and value != own_id:
        raise rpc.invalid_params("invalid subaccount_id", "subaccount_id")


METHODS: dict[str, Handler] = {
    "public/get_time": get_time,
    "public/hello": hello,
    "public/test": test,
    "public/set_heartbeat": set_heartbeat,
    "public/disable_heartbeat": disable_heartbeat,
    "public/get_index_price": get_index_price,
    "public/get_index_price_names": get_index_price_names,
    "public/get_index_chart_data": get_index_chart_data,
    "public/subscribe": subscribe,
    "public/unsubscribe": unsubscribe,
    "public/unsubscribe_all": unsubscribe_all,
    "private/subscribe": _private(subscribe),
    "private/unsubscribe": _private(unsubscribe),
    "private/unsubscribe_all": _private(unsubscribe_all),
    "private/get_account_summary": get_account_summary,
    "private/get_account_summaries": get_account_summaries,
}
