"""The simulator's instruments (reference §12, §13): the listing, `public/ticker`, the ticker
channels with the fields of each kind, `raw` refused unauthenticated, and expiry."""

import re
from datetime import UTC, datetime

import pytest

from cryptomarket.deribit.simulator.instruments import (
    PERPETUAL_EXPIRY_MS,
    Catalogue,
    date_code,
    expiries,
    strike_code,
)

# Reference §12.4: the names of outright instruments.
OUTRIGHT = re.compile(
    r"^(?P<base>[A-Z0-9]+)(?:_(?P<quote>[A-Z0-9]+))?-(?:PERPETUAL|(?P<day>\d{1,2})"
    r"(?P<mon>JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)(?P<yy>\d{2})"
    r"(?:-(?P<strike>\d+(?:d\d+)?)-(?P<cp>[CP]))?)$"
)
COMMON = {
    "timestamp",
    "state",
    "instrument_name",
    "mark_price",
    "index_price",
    "last_price",
    "best_bid_price",
    "best_ask_price",
    "best_bid_amount",
    "best_ask_amount",
    "open_interest",
    "min_price",
    "max_price",
    "settlement_price",
    "estimated_delivery_price",
    "stats",
}
PERPETUAL_ONLY = {"current_funding", "funding_8h", "interest_value"}
OPTION_ONLY = {
    "greeks",
    "mark_iv",
    "bid_iv",
    "ask_iv",
    "underlying_price",
    "underlying_index",
    "interest_rate",
}


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {row["instrument_name"]: row for row in rows}


async def test_the_listing_has_every_kind_with_deribits_names_and_fields(simulator, connect):
    client = await connect(simulator)
    btc = by_name(await client.result("public/get_instruments", {"currency": "BTC"}))
    assert btc["BTC-PERPETUAL"]["expiration_timestamp"] == PERPETUAL_EXPIRY_MS
    assert btc["BTC-PERPETUAL"]["settlement_period"] == "perpetual"
    assert btc["BTC-PERPETUAL"]["price_index"] == "btc_usd"
    futures = [
        r for r in btc.values() if r["kind"] == "future" and r["settlement_period"] != "perpetual"
    ]
    options = [r for r in btc.values() if r["kind"] == "option"]
    assert len(futures) >= 4 and len(options) >= 10
    for row in btc.values():
        assert OUTRIGHT.match(row["instrument_name"]), row["instrument_name"]
        assert row["settlement_currency"] == "BTC" and row["instrument_type"] == "reversed"
        assert row["is_active"] and row["state"] == "open"
    for row in futures + options:
        expiry = datetime.fromtimestamp(row["expiration_timestamp"] / 1000, UTC)
        assert (expiry.hour, expiry.minute) == (8, 0)  # dated products expire 08:00 UTC
        assert date_code(expiry) in row["instrument_name"]
    assert {r["option_type"] for r in options} == {"call", "put"}
    linear = by_name(await client.result("public/get_instruments", {"currency": "USDC"}))
    assert {"BTC_USDC-PERPETUAL", "SOL_USDC-PERPETUAL"} <= set(linear)
    assert all(r["instrument_type"] == "linear" for r in linear.values())
    assert any(r["kind"] == "option" for r in linear.values())
    only_options = await client.result(
        "public/get_instruments", {"currency": "ETH", "kind": "option"}
    )
    assert only_options and {r["kind"] for r in only_options} == {"option"}
    assert await client.result("public/get_instruments", {"currency": "USDT"}) == []
    bad = await client.error("public/get_instruments", {"currency": "DOGE"})
    assert bad["code"] == -32602 and bad["data"]["reason"] == "invalid currency"


async def test_ticker_channels_carry_the_fields_of_each_kind(simulator, connect):
    client = await connect(simulator)
    btc = by_name(await client.result("public/get_instruments", {"currency": "BTC"}))
    future = next(n for n, r in btc.items() if r["kind"] == "future" and "PERPETUAL" not in n)
    option = next(n for n, r in btc.items() if r["kind"] == "option")
    names = {"BTC-PERPETUAL": PERPETUAL_ONLY, future: set(), option: OPTION_ONLY}
    channels = [f"ticker.{name}.100ms" for name in names]
    assert await client.result("public/subscribe", {"channels": channels}) == channels
    for name, own in names.items():
        data = await client.tick(f"ticker.{name}.100ms")
        assert set(data) == COMMON | own, name
        assert data["instrument_name"] == name and data["state"] == "open"
        assert data["best_bid_price"] < data["best_ask_price"]
        assert data["min_price"] < data["mark_price"] < data["max_price"]
    perpetual = await client.tick("ticker.BTC-PERPETUAL.100ms")
    index = simulator.price("btc_usd")
    assert perpetual["mark_price"] == pytest.approx(index, rel=0.01)  # it follows its index
    first = await client.tick(f"ticker.{option}.100ms")
    assert 0 < first["mark_price"] < 1  # an inverse option is priced in coin
    # 100ms: at most one frame per 100 ms window, each a new timestamp.
    stamps = [(await client.tick("ticker.BTC-PERPETUAL.100ms"))["timestamp"] for _ in range(8)]
    assert len({ts // 100 for ts in stamps}) == len(stamps)
    sent = simulator.produced_instrument("BTC-PERPETUAL", stamps[0] - 1, stamps[-1])
    assert [ts for ts, _ in sent] == stamps  # sim/produced knows every frame the channel sent
    rest = await client.result("public/ticker", {"instrument_name": "BTC-PERPETUAL"})
    assert set(rest) == COMMON | PERPETUAL_ONLY
    missing = await client.error("public/ticker", {"instrument_name": "BTC-1JAN99"})
    assert missing["data"]["reason"] == "instrument not found"


async def test_unknown_channels_are_left_out_and_raw_needs_authentication(simulator, connect):
    client = await connect(simulator)
    wanted = ["ticker.BTC-PERPETUAL.100ms", "ticker.NOPE-PERPETUAL.100ms", "ticker.BTC-PERPETUAL.x"]
    assert await client.result("public/subscribe", {"channels": wanted}) == wanted[:1]
    refused = await client.error("public/subscribe", {"channels": ["ticker.BTC-PERPETUAL.raw"]})
    assert refused == {
        "code": 13778,
        "message": "raw_subscriptions_not_available_for_unauthorized",
    }
    await client.auth()
    raw = ["ticker.BTC-PERPETUAL.raw"]
    assert await client.result("public/subscribe", {"channels": raw}) == raw
    assert (await client.tick(raw[0]))["instrument_name"] == "BTC-PERPETUAL"


async def test_an_expiring_instrument_sends_its_last_two_frames_then_falls_silent(
    simulator, connect
):
    client, control = await connect(simulator), await connect(simulator)
    btc = await client.result("public/get_instruments", {"currency": "BTC", "kind": "option"})
    name = btc[0]["instrument_name"]
    channel = f"ticker.{name}.100ms"
    await client.result("public/subscribe", {"channels": [channel]})
    await client.tick(channel)
    assert await control.result("sim/expire_instrument", {"instrument_name": name}) == "ok"
    data = await client.tick(channel)
    while data["estimated_delivery_price"] != "expired":  # updates queued before the expiry
        data = await client.tick(channel)
    assert data["state"] == "open" and set(data["greeks"].values()) == {0.0}
    final = await client.tick(channel)
    assert final["state"] == "closed" and "delivery_price" in final
    assert "settlement_price" not in final
    with pytest.raises(TimeoutError):
        await client.tick(channel, timeout=0.5)  # nothing more on that channel
    live = by_name(await client.result("public/get_instruments", {"currency": "BTC"}))
    expired = by_name(
        await client.result("public/get_instruments", {"currency": "BTC", "expired": True})
    )
    assert name not in live and expired[name]["state"] == "closed"
    assert await client.result("public/subscribe", {"channels": [channel]}) == []
    assert (await client.result("public/ticker", {"instrument_name": name}))["state"] == "closed"
    unknown = await control.error("sim/expire_instrument", {"instrument_name": name})
    assert unknown["code"] == -32602


def test_expiries_are_deribits_dates_and_the_listing_moves_on_as_they_pass():
    start = int(datetime(2026, 12, 3, 12, tzinfo=UTC).timestamp() * 1000)
    dates = [datetime.fromtimestamp(ms / 1000, UTC) for ms, _ in expiries(start)]
    assert [date_code(d) for d in dates[:2]] == ["4DEC26", "5DEC26"]  # the next two days
    assert "25DEC26" in {date_code(d) for d in dates}  # December's last Friday
    assert "26MAR27" in {date_code(d) for d in dates}  # the next quarter's
    assert strike_code(100_000.0) == "100000" and strike_code(0.625) == "0d625"
    catalogue = Catalogue(lambda index: 95_000.0 if index.startswith("btc") else 100.0)
    catalogue.refresh(start)
    assert "BTC-4DEC26" in catalogue.live
    day_later = start + 86_400_000
    ended = catalogue.refresh(day_later)
    assert "BTC-4DEC26" in {i.name for i in ended}
    assert "BTC-4DEC26" in catalogue.expired and "BTC-6DEC26" in catalogue.live
