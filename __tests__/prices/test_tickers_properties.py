"""Properties of the ticker check, against the live service and the simulator's lists: any text
is a known index name or instrument, a 422 (neither an index nor an instrument name) or a 404
(unknown, with the list to look in), never anything else, both in the service and over HTTP."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from __tests__.service import Service
from cryptomarket.core.config import TICKER_PATTERN
from cryptomarket.core.errors import InvalidInput, NotFound
from cryptomarket.instruments.names import INSTRUMENT_PATTERN, is_instrument

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
name_like = st.from_regex(r"[a-z0-9]{1,6}([-_][a-z0-9]{1,6}){1,2}", fullmatch=True)
texts = st.one_of(
    name_like,
    st.text(max_size=80),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_-. \n\t\x00/%?#", max_size=70),
    name_like.map(str.upper),
    name_like.map(lambda name: name + "\n"),
    st.sampled_from(["BTC-PERPETUAL", "ETH-PERPETUAL", "SOL_USDC-PERPETUAL", "BTC-1JAN20"]),
)


@SETTINGS
@given(ticker=texts)
async def test_any_text_is_known_malformed_or_unknown(service: Service, ticker: str) -> None:
    prices = service.runtime.prices
    known = set(await prices.catalogue.names())
    instruments = {i.name for i in await service.runtime.instruments.all()}
    instrument = is_instrument(ticker)
    pattern = INSTRUMENT_PATTERN if instrument else TICKER_PATTERN
    try:
        assert await prices.check_ticker(ticker) == ticker
    except InvalidInput as malformed:
        assert not pattern.fullmatch(ticker)
        assert malformed.status_code == 422
        return
    except NotFound as unknown:
        assert pattern.fullmatch(ticker) and ticker not in known | instruments
        where = "/api/v1/instruments" if instrument else "/api/v1/tickers"
        assert unknown.code == "unknown_ticker" and where in unknown.detail
        return
    assert ticker in known | instruments or ticker in prices.always_known


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ticker=texts)
async def test_any_ticker_over_http_is_an_answer_or_a_clear_4xx(
    service: Service, ticker: str
) -> None:
    response = await service.client.get("/api/v1/prices", params={"ticker": ticker})
    if response.status_code == 200:
        assert response.json()["ticker"] == ticker
        return
    assert response.status_code in (404, 422), (ticker, response.text)
    body = response.json()
    assert set(body) == {"detail", "code"}, body


async def test_the_catalogue_is_the_simulators_list(service: Service) -> None:
    names = await service.runtime.prices.catalogue.names()
    assert {"btc_usd", "eth_usd"} <= set(names)
    assert all(TICKER_PATTERN.fullmatch(name) for name in names)
