"""What the request handlers share: the simulator's state and the call being answered."""

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cryptomarket.deribit.credits import bucket_for
from cryptomarket.deribit.simulator.config import SimulatorConfig
from cryptomarket.deribit.simulator.instrument_market import InstrumentMarket
from cryptomarket.deribit.simulator.market import Market
from cryptomarket.deribit.simulator.rpc import Params
from cryptomarket.deribit.simulator.session import Session
from cryptomarket.deribit.simulator.tokens import Grant, NonceRegistry, TokenStore
from cryptomarket.kit.buckets import TokenBucket


@dataclass(frozen=True)
class InjectedError:
    """sim/fail_requests: requests (all, or those of `methods`) answer this error until `until`."""

    code: int
    message: str
    until: float  # loop time
    methods: frozenset[str] | None = None

    def applies(self, method: str, now: float) -> bool:
        return now < self.until and (self.methods is None or method in self.methods)


NO_REPLY: Final = object()  # a handler's result when the method answers nothing (logout)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class SimState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.accounts = {account.client_id: account for account in config.accounts}
        self.market = Market(
            seed=config.seed,
            tick_interval=config.tick_interval,
            started_ms=now_ms(),
            record_hours=config.record_hours,
            chart_spacing_ms=round(config.chart_spacing * 1000),
        )
        self.instruments = InstrumentMarket(
            self.market.seed,
            self.market.price,
            interval=config.instrument_interval,
            keep_ms=max(3_600_000, int(config.record_hours * 3_600_000)),
            now_ms=now_ms(),
        )
        self.tokens = TokenStore()
        self.nonces = NonceRegistry()
        self.sessions: dict[int, Session] = {}
        # Set by the control methods; loop times, and seconds of added latency.
        self.latency = 0.0
        self.reply_jitter = 0.0
        self.paused_until = 0.0
        self.refuse_until = 0.0
        self.injected: InjectedError | None = None
        self.calls: Counter[str] = Counter()
        self.errors: Counter[int] = Counter()
        self._buckets: dict[tuple[str, str, str], TokenBucket] = {}

    def socket_grant(self, session: Session) -> Grant | None:
        """The socket's own prior auth, while it is still valid."""
        if session.grant is None:
            return None
        grant = self.tokens.by_access(session.grant.access_token, session.id)
        if grant is None:
            session.grant = None
        return grant

    def charge(self, session: Session, method: str) -> bool:
        """Take the method's credits from the account's bucket, or the IP's when unauthenticated."""
        grant = self.socket_grant(session)
        owner = ("account", str(grant.account.id)) if grant else ("ip", session.ip)
        name = bucket_for(method)
        limits = self.config.subscribe_limits if name == "subscribe" else self.config.default_limits
        key = (*owner, name)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(limits.cap, limits.refill_per_second)
        return bucket.try_take(limits.cost)


@dataclass
class Call:
    """One request being handled."""

    state: SimState
    session: Session
    params: Params

    @property
    def others(self) -> list[Session]:
        """Every connection except the caller's."""
        return [s for s in self.state.sessions.values() if s is not self.session]


Handler = Callable[[Call], Any]
