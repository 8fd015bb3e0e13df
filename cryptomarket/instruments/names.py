"""Which kind a ticker is: Deribit's index names are lower case (`btc_usd`), its instrument names
upper case (`BTC-PERPETUAL`, `SOL_USDC-PERPETUAL`, `BTC-27DEC24-100000-C`; reference §12.4)."""

import re

# Instrument names: upper-case letters, digits and _ - ; options' decimal strikes use `d`.
INSTRUMENT_PATTERN = re.compile(r"^[A-Z0-9]+(?:[-_][A-Za-z0-9]+)*$")
INSTRUMENTS_URL = "/api/v1/instruments?currency=&kind="


def is_instrument(ticker: str) -> bool:
    """An instrument name (any upper-case letter), else an index name."""
    return ticker != ticker.lower()
