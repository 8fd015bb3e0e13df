"""Properties of the ticker check, against the live service and the simulator's index list: any
text is a known index name, a 422 (not an index name) or a 404 (unknown), never anything else,
both in the service and over HTTP."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from __tests__.service import Service
from cryptomarket.core.config import TICKER_PATTERN
from cryptomarket.core.errors import InvalidInput, NotFound

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
)


@SETTINGS
@given(ticker=texts)
async def test_any_text_is_known_malformed_or_unknown(service: Service, ticker: str) -> None:
    prices = service.runtime.prices
    known = set(await prices.catalogue.names())
    try:
        assert await prices.check_ticker(ticker) == ticker
    except InvalidInput as malformed:
        assert not TICKER_PATTERN.fullmatch(ticker)
        assert malformed.status_code == 422
        return
    except NotFound as unknown:
        assert TICKER_PATTERN.fullmatch(ticker) and ticker not in known
        assert unknown.code == "unknown_ticker" and "/api/v1/tickers" in unknown.detail
        return
    assert ticker in known or ticker in prices.always_known


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
