"""Account data answered by `private/get_account_summary` and `private/get_account_summaries`
(reference §4). Balances are made up, but stable: the same account always shows the same ones."""

import random
from typing import Any

from cryptomarket.deribit.simulator.accounts import Account
from cryptomarket.deribit.simulator.config import SimulatorConfig

# Reference §4.1: the documented currency enum, with a balance scale worth roughly $50k each.
CURRENCY_SCALES: dict[str, float] = {
    "BTC": 0.5,
    "ETH": 15.0,
    "STETH": 15.0,
    "ETHW": 20_000.0,
    "USDC": 50_000.0,
    "USDT": 50_000.0,
    "EURR": 45_000.0,
    "MATIC": 100_000.0,
    "SOL": 300.0,
    "XRP": 20_000.0,
    "USYC": 45_000.0,
    "PAXG": 20.0,
    "BNB": 80.0,
    "USDE": 50_000.0,
}
CURRENCIES = tuple(CURRENCY_SCALES)

_ZERO_FIELDS = (
    "initial_margin",
    "maintenance_margin",
    "projected_initial_margin",
    "projected_maintenance_margin",
    "total_pl",
    "session_rpl",
    "session_upl",
    "futures_pl",
    "options_pl",
    "delta_total",
    "projected_delta_total",
    "options_delta",
    "options_gamma",
    "options_theta",
    "options_vega",
    "options_value",
    "fee_balance",
    "spot_reserve",
    "additional_reserve",
    "estimated_liquidation_ratio",
)


def limits(config: SimulatorConfig) -> dict[str, Any]:
    """The account's rate limits, derived from the credits the simulator really enforces."""

    def rate_burst(cost: int, cap: int, refill: float) -> dict[str, int]:
        return {"rate": round(refill / cost), "burst": cap // cost}

    default = config.default_limits
    # Matching-engine limits are not enforced (no trading); Deribit's lowest tier is shown.
    tier = {"rate": 5, "burst": 20}
    return {
        "limits_per_currency": False,
        "non_matching_engine": rate_burst(default.cost, default.cap, default.refill_per_second),
        "matching_engine": {"trading": {"total": dict(tier)}, "cancel_all": dict(tier)},
    }


def currency_summary(account: Account, currency: str, config: SimulatorConfig) -> dict[str, Any]:
    """The money fields of one currency (always present)."""
    rng = random.Random(f"{account.id}:{currency}")
    balance = round(CURRENCY_SCALES[currency] * rng.uniform(0.2, 2.0), 8)
    summary: dict[str, Any] = {
        "currency": currency,
        "balance": balance,
        "equity": balance,
        "margin_balance": balance,
        "available_funds": balance,
        "available_withdrawal_funds": balance,
    }
    summary.update(dict.fromkeys(_ZERO_FIELDS, 0.0))
    summary.update(
        margin_model="segregated_sm",
        portfolio_margining_enabled=False,
        cross_collateral_enabled=False,
        limits=limits(config),
    )
    return summary


def identity(account: Account) -> dict[str, Any]:
    """The account fields Deribit returns only with `extended=true`."""
    return {
        "id": account.id,
        "email": account.email,
        "username": account.username,
        "system_name": account.username,
        "type": account.type,
        # Fixed per account, so repeated calls agree.
        "creation_timestamp": 1_687_352_432_143 + account.id * 1000,
        "referrer_id": None,
        "login_enabled": account.type == "main",
        "security_keys_enabled": False,
        "mmp_enabled": False,
        "interuser_transfers_enabled": False,
        "self_trading_reject_mode": "cancel_maker",
        "self_trading_extended_to_subaccounts": False,
    }
