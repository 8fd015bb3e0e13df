"""What a run looks like, from its seed: the tickers, the users who share them, their accounts."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from cryptomarket.deribit.simulator.indexes import INDEX_NAMES

PASSWORD_OF = "chaos-secret-"  # noqa: S105 (the simulator accounts' made-up secrets)
TIMER_USER = "timer0"  # the timer>0 client's user
# Instruments beside the indexes, on their `100ms` channels: perpetuals, which never expire mid-run.
INSTRUMENTS = ("BTC-PERPETUAL", "ETH-PERPETUAL")
STORE_INTERVAL_MS = 1000  # the gateway's INSTRUMENT_STORE_INTERVAL_MS (its default)


@dataclass
class Plan:
    """What the run looks like: mode, tickers and load (everything but the faults)."""

    mode: str  # "distributed" or "embedded"
    seed: int
    tick_interval: float
    tracked: list[str]
    users: dict[str, list[str]]  # steady user -> its timer=0 tickers
    storm_users: list[str]
    storm_tickers: list[str]
    accounts_file: Path = field(default=Path())

    @property
    def ledger_tickers(self) -> list[str]:
        """Ingested for the whole run: tracked, or held by a steady user from before the start."""
        held = {ticker for tickers in self.users.values() for ticker in tickers}
        return sorted(set(self.tracked) | held)


def write_accounts(plan: Plan, directory: Path) -> None:
    """One simulator account per user: a user id belongs to the Deribit account that claimed it."""
    names = [*plan.users, *plan.storm_users, TIMER_USER]
    accounts = [
        {
            "client_id": f"chaos-{name}",
            "client_secret": PASSWORD_OF + name,
            "id": 5000 + i,
            "username": name,
            "email": f"{name}@example.com",
            "type": "main",
        }
        for i, name in enumerate(names)
    ]
    plan.accounts_file = directory / "accounts.json"
    plan.accounts_file.write_text(json.dumps(accounts))


def make_plan(mode: str, seed: int, tickers: int, tick_interval: float) -> Plan:
    """Tickers chosen by the seed: some tracked, the rest held by users who share them."""
    rng = random.Random(f"chaos-plan:{seed}")
    names = rng.sample([n for n in INDEX_NAMES if "-" not in n], k=tickers)
    tracked, held = names[: tickers // 3], names[tickers // 3 :]
    users = {}
    for i in range(4):  # each ticker on at least one timer=0 stream, most on two or more
        mine = {held[i % len(held)], *rng.sample(held, k=min(4, len(held)))}
        users[f"steady{i}"] = sorted(mine | set(tracked[i::4]))
    for ticker in held:
        if not any(ticker in t for t in users.values()):
            users["steady0"].append(ticker)
    users["steady0"] += INSTRUMENTS  # both on one stream, each on another one too
    users["steady2"].append(INSTRUMENTS[0])
    users["steady3"].append(INSTRUMENTS[1])
    storm_only = [n for n in INDEX_NAMES if "-" not in n and n not in names][:3]
    storm_tickers = sorted({*rng.sample(held, k=2), tracked[0], *storm_only})
    storm_users = ["storm0", "storm1", "storm2"]
    return Plan(mode, seed, tick_interval, tracked, users, storm_users, storm_tickers)
