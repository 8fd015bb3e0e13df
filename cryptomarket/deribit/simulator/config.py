"""Settings of one simulator instance."""

from dataclasses import dataclass, field

from cryptomarket.deribit.credits import DEFAULT_LIMITS, SUBSCRIBE_LIMITS, CreditLimits
from cryptomarket.deribit.simulator.accounts import DEFAULT_ACCOUNTS, Account
from cryptomarket.deribit.simulator.market import check_chart_spacing


@dataclass
class SimulatorConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0 picks a free port
    tick_interval: float = 1.0  # mean seconds between two ticks of an index (each jittered)
    seed: int | None = None  # seeds the price walk
    accounts: list[Account] = field(default_factory=lambda: list(DEFAULT_ACCOUNTS))
    min_heartbeat_interval: float = 10.0  # Deribit's minimum; tests lower it to run fast
    default_limits: CreditLimits = DEFAULT_LIMITS
    subscribe_limits: CreditLimits = SUBSCRIBE_LIMITS
    max_connections_per_ip: int = 32
    chart_spacing: float = 60.0  # seconds between 1h chart points; 0 serves every live tick
    record_hours: float = 2.0  # sim/produced remembers at least this long (and at least 1 h)
    instrument_interval: float = 0.1  # mean seconds between two updates of an instrument

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"simulator port must be 0-65535, not {self.port}")
        if self.tick_interval <= 0:
            raise ValueError(f"tick interval must be positive, not {self.tick_interval}")
        check_chart_spacing(round(self.chart_spacing * 1000))
        if self.instrument_interval <= 0:
            raise ValueError(
                f"instrument interval must be positive, not {self.instrument_interval}"
            )
        if self.record_hours < 0:
            raise ValueError(f"record hours must not be negative, not {self.record_hours}")
        if self.min_heartbeat_interval <= 0:
            raise ValueError("minimum heartbeat interval must be positive")
        if self.max_connections_per_ip < 1:
            raise ValueError("max connections per IP must be at least 1")
        if not self.accounts:
            raise ValueError("the simulator needs at least one account")
        client_ids = [account.client_id for account in self.accounts]
        if len(set(client_ids)) != len(client_ids):
            raise ValueError("simulator accounts must have distinct client_ids")
