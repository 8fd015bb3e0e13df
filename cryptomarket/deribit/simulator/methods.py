"""Public and private methods other than auth: market data, subscriptions, heartbeat, account."""

from typing import Any

from cryptomarket.deribit.errors import (
    InstrumentNotFound,
    InternalServerError,
    RawNotForUnauthorized,
)
from cryptomarket.deribit.simulator import rpc, summary
from cryptomarket.deribit.simulator.auth_methods import private_grant
from cryptomarket.deribit.simulator.indexes import COMBO_ENABLED, INDEX_NAMES
from cryptomarket.deribit.simulator.instrument_market import parse_channel
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
    """Only known index and live instrument channels are acknowledged; the rest is dropped
    silently, like Deribit. A `raw` ticker needs an authenticated connection (13778)."""
    wanted = list(dict.fromkeys(rpc.channels(call.params)))
    tickers = {channel: parse_channel(channel) for channel in wanted}
    if any(t is not None and t[1] == "raw" for t in tickers.values()) and (
        call.state.socket_grant(call.session) is None
    ):
        raise RawNotForUnauthorized("raw_subscriptions_not_available_for_unauthorized")
    now = now_ms()
    accepted = []
    for channel in wanted:
        ticker = tickers[channel]
        if ticker is not None:
            if call.state.instruments.activate(ticker[0], now):
                accepted.append(channel)
        elif (
            channel.startswith(CHANNEL_PREFIX)
            and channel.removeprefix(CHANNEL_PREFIX) in call.state.market
        ):
            accepted.append(channel)
    call.session.subscriptions.update(accepted)
    return accepted


CURRENCIES = ("BTC", "ETH", "USDC", "USDT", "EURR", "any")
KINDS = ("future", "option", "spot", "future_combo", "option_combo")


def get_instruments(call: Call) -> list[dict[str, Any]]:
    currency = rpc.string(call.params, "currency")
    if currency not in CURRENCIES:
        raise rpc.invalid_params("invalid currency", "currency")
    kind = call.params.get("kind")
    if kind is not None and kind not in KINDS:
        raise rpc.invalid_params("invalid kind", "kind")
    expired = rpc.boolean(call.params, "expired")
    return call.state.instruments.catalogue.listed(currency, kind, expired)


def ticker(call: Call) -> dict[str, Any]:
    name = rpc.string(call.params, "instrument_name")
    answer = call.state.instruments.expired_answer(name)
    if answer == "not_found":
        raise InstrumentNotFound("not_found", data={"reason": "instrument not found"})
    if answer == "unknown":
        raise rpc.invalid_params("instrument not found", "instrument_name")
    data = call.state.instruments.ticker(name, now_ms())
    if data is None:
        raise rpc.invalid_params("instrument not found", "instrument_name")
    return data


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
    "public/get_instruments": get_instruments,
    "public/ticker": ticker,
    "public/subscribe": subscribe,
    "public/unsubscribe": unsubscribe,
    "public/unsubscribe_all": unsubscribe_all,
    "private/subscribe": _private(subscribe),
    "private/unsubscribe": _private(unsubscribe),
    "private/unsubscribe_all": _private(unsubscribe_all),
    "private/get_account_summary": get_account_summary,
    "private/get_account_summaries": get_account_summaries,
}
