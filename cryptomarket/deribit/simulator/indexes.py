"""The simulated Deribit indexes: their names and rough price levels (reference §5.2)."""

import math

# Reference §5.2: the documented enum (47 names), with rough real-world price levels.
BASE_PRICES: dict[str, float] = {
    "btc_usd": 95_000.0,
    "eth_usd": 3_500.0,
    "ada_usdc": 0.7,
    "algo_usdc": 0.2,
    "avax_usdc": 25.0,
    "bch_usdc": 450.0,
    "bnb_usdc": 650.0,
    "btc_usdc": 95_000.0,
    "btcdvol_usdc": 50.0,
    "buidl_usdc": 1.0,
    "doge_usdc": 0.2,
    "dot_usdc": 5.0,
    "eurr_usdc": 1.08,
    "eth_usdc": 3_500.0,
    "ethdvol_usdc": 65.0,
    "link_usdc": 15.0,
    "ltc_usdc": 90.0,
    "near_usdc": 3.0,
    "paxg_usdc": 2_600.0,
    "shib_usdc": 0.00002,
    "sol_usdc": 180.0,
    "steth_usdc": 3_500.0,
    "ton_usdc": 3.0,
    "trump_usdc": 10.0,
    "trx_usdc": 0.25,
    "uni_usdc": 8.0,
    "usde_usdc": 1.0,
    "usyc_usdc": 1.1,
    "xrp_usdc": 2.2,
    "btc_usdt": 95_000.0,
    "eth_usdt": 3_500.0,
    "eurr_usdt": 1.08,
    "sol_usdt": 180.0,
    "steth_usdt": 3_500.0,
    "usdc_usdt": 1.0,
    "usde_usdt": 1.0,
    "btc_eurr": 88_000.0,
    "btc_usde": 95_000.0,
    "btc_usyc": 86_000.0,
    "eth_btc": 0.037,
    "eth_eurr": 3_240.0,
    "eth_usde": 3_500.0,
    "eth_usyc": 3_180.0,
    "steth_eth": 1.0,
    "paxg_btc": 0.027,
    "drbfix-btc_usdc": 95_000.0,
    "drbfix-eth_usdc": 3_500.0,
}
INDEX_NAMES: tuple[str, ...] = tuple(BASE_PRICES)
# Stablecoin and wrapped-asset pairs barely move.
PEGGED = frozenset(
    {"buidl_usdc", "eurr_usdc", "eurr_usdt", "usde_usdc", "usde_usdt", "usyc_usdc", "usdc_usdt"}
    | {"steth_eth"}
)
# Indices with futures and options, for get_index_price_names(extended=true).
COMBO_ENABLED = frozenset({"btc_usd", "eth_usd", "btc_usdc", "eth_usdc"})


def decimals_for(price: float) -> int:
    """Quote precision: cents above 1, about five significant digits below."""
    return 2 if price >= 1 else 4 - math.floor(math.log10(price))
