"""A Deribit look-alike WebSocket server for development and tests (SPEC §8).

`cryptomarket simulate` runs it; tests start a `Simulator` on port 0. It speaks the subset of the
Deribit API the service uses, with Deribit's frames, error codes and connection rules, plus `sim/*`
control methods. Default API keys (see `accounts`): `sim-alice` / `sim-alice-secret` (main
account 1001) and `sim-bob` / `sim-bob-secret` (subaccount 1002).
"""

from cryptomarket.deribit.simulator.accounts import DEFAULT_ACCOUNTS, Account, load_accounts
from cryptomarket.deribit.simulator.config import SimulatorConfig
from cryptomarket.deribit.simulator.server import Simulator, run

__all__ = ["DEFAULT_ACCOUNTS", "Account", "Simulator", "SimulatorConfig", "load_accounts", "run"]
