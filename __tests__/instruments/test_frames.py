"""Instrument ticker frames as the reference gives them (§13.3) become ticks, every kind, with
Deribit's unkind parts: no `stats`, `null` prices, `"expired"` instead of a number."""

from cryptomarket.instruments.frames import is_final, parse_ticker
from cryptomarket.prices.kinds import MalformedFrame, channel_of, parse_frame, ticker_of

LINEAR_PERPETUAL = {  # §13.3, production 2026-09: no stats key
    "timestamp": 1790133840887,
    "state": "open",
    "index_price": 86744.11,
    "instrument_name": "BTC_USDC-PERPETUAL",
    "last_price": 86773.6,
    "settlement_price": 85380.58,
    "min_price": 85476.4,
    "max_price": 88079.9,
    "open_interest": 459.3409,
    "mark_price": 86778.14,
    "interest_value": 272719551.2863254,
    "current_funding": 1.423e-4,
    "estimated_delivery_price": 86744.11,
    "funding_8h": 5.149e-5,
    "best_ask_price": 86778.0,
    "best_bid_price": 86775.9,
    "best_ask_amount": 0.3001,
    "best_bid_amount": 0.0645,
}
LINEAR_OPTION = {  # §13.3, production 2024-03: last_price null, stats partly null
    "estimated_delivery_price": 1.1367,
    "best_bid_amount": 0.0,
    "best_ask_amount": 0.0,
    "bid_iv": 0.0,
    "ask_iv": 0.0,
    "underlying_index": "index_price",
    "underlying_price": 1.1367,
    "mark_iv": 209.64,
    "best_bid_price": 0.0,
    "best_ask_price": 0.0,
    "interest_rate": 0,
    "open_interest": 0.0,
    "max_price": 60.139,
    "min_price": 0.0005,
    "last_price": None,
    "instrument_name": "MATIC_USDC-9MAR24-1d02-C",
    "mark_price": 0.139,
    "index_price": 1.1367,
    "greeks": {
        "rho": 0.00004,
        "theta": -0.01323,
        "vega": 0.00024,
        "gamma": 1.70098,
        "delta": 0.7869,
    },
    "stats": {
        "volume_notional": 0.0,
        "volume_usd": 0.0,
        "volume": 0.0,
        "price_change": None,
        "low": None,
        "high": None,
    },
    "state": "open",
    "timestamp": 1709809020064,
}
EXPIRED_OPTION = {  # §13.4, the final frame of an expiry
    "underlying_price": 9724.48,
    "underlying_index": "SYN.BTC-8JUN20",
    "timestamp": 1591603200048,
    "stats": {"volume": 2.5, "price_change": 0.0, "low": 0.0005, "high": 0.0005},
    "state": "closed",
    "open_interest": 0.0,
    "mark_price": 0.0,
    "mark_iv": 70.0,
    "instrument_name": "BTC-8JUN20-8750-P",
    "index_price": 9729.25,
    "greeks": {"vega": 0.0, "theta": 0.0, "rho": 0.0, "gamma": 0.0, "delta": 0.0},
    "estimated_delivery_price": "expired",
    "delivery_price": 9728.65,
}


def test_each_kinds_frame_keeps_its_fields_and_ignores_the_rest() -> None:
    perpetual = parse_ticker("BTC_USDC-PERPETUAL", {**LINEAR_PERPETUAL, "new_key": [1, 2]})
    assert perpetual is not None and perpetual.price == 86778.14
    assert perpetual.timestamp == 1790133840887
    fields = perpetual.fields or {}
    assert fields["current_funding"] == 1.423e-4 and fields["best_bid_amount"] == 0.0645
    assert "stats" not in fields and "new_key" not in fields
    option = parse_ticker("MATIC_USDC-9MAR24-1d02-C", LINEAR_OPTION)
    assert option is not None
    fields = option.fields or {}
    assert fields["last_price"] is None and fields["interest_rate"] == 0.0
    assert fields["greeks"]["delta"] == 0.7869 and fields["stats"]["high"] is None
    assert fields["underlying_index"] == "index_price" and not is_final(option)
    expired = parse_ticker("BTC-8JUN20-8750-P", EXPIRED_OPTION)
    assert expired is not None and is_final(expired)
    assert (expired.fields or {})["estimated_delivery_price"] == "expired"
    assert (expired.fields or {})["delivery_price"] == 9728.65


def test_frames_without_a_timestamp_or_mark_are_refused() -> None:
    for broken in (
        {**LINEAR_PERPETUAL, "mark_price": None},
        {**LINEAR_PERPETUAL, "mark_price": "1.0"},
        {**LINEAR_PERPETUAL, "timestamp": True},
        {k: v for k, v in LINEAR_PERPETUAL.items() if k != "timestamp"},
    ):
        assert parse_ticker("BTC_USDC-PERPETUAL", broken) is None
    for data in ([], {"mark_price": 1.0}):
        try:
            parse_frame("BTC-PERPETUAL", data)
        except MalformedFrame:
            continue
        raise AssertionError(f"accepted {data!r}")


def test_each_kind_has_its_channel() -> None:
    assert channel_of("btc_usd") == "deribit_price_index.btc_usd"
    assert channel_of("BTC-PERPETUAL") == "ticker.BTC-PERPETUAL.100ms"
    assert channel_of("drbfix-btc_usdc") == "deribit_price_index.drbfix-btc_usdc"
    for ticker in ("btc_usd", "BTC-PERPETUAL", "BTC-27DEC24-100000-C", "drbfix-btc_usdc"):
        assert ticker_of(channel_of(ticker)) == ticker
    assert ticker_of("ticker.BTC-PERPETUAL.raw") is None
    assert ticker_of("book.BTC-PERPETUAL.100ms") is None
