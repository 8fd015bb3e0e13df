"""Jittered exponential backoff for reconnects."""

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays that double from `initial` up to `maximum`, each drawn from its upper half.

    The jitter keeps a fleet of clients that lost Deribit at the same moment from coming back in
    lockstep; the floor of half the ceiling keeps any one of them from retrying in a tight loop.
    A connection that stayed up for `stable_after` seconds starts again from `initial`.
    """

    initial: float = 0.5
    maximum: float = 30.0
    multiplier: float = 2.0
    stable_after: float = 30.0
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * self.multiplier**self.attempts)
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0
