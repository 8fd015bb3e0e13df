"""What was down, and when: Redis failures seen by any part of a process, for `/health`."""

import time
from dataclasses import dataclass
from datetime import UTC, datetime

REMEMBER_FOR = 600.0  # seconds an ended outage is still reported


@dataclass
class Outage:
    started: float  # wall clock
    ended: float | None
    reason: str


class OutageLog:
    def __init__(self, name: str) -> None:
        self.name = name
        self.current: Outage | None = None
        self.last: Outage | None = None

    def failed(self, error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else type(error).__name__
        if self.current is None:
            self.current = Outage(time.time(), None, reason)

    def succeeded(self) -> None:
        if self.current is not None:
            self.current.ended = time.time()
            self.last, self.current = self.current, None

    @property
    def down(self) -> bool:
        return self.current is not None

    def describe(self) -> str:
        """`ok`, `down since <time>: <reason>`, or `ok (was down <s> until <time>: <reason>)`."""
        if self.current is not None:
            return f"down since {_clock(self.current.started)}: {self.current.reason}"
        last = self.last
        if last is not None and last.ended is not None and time.time() - last.ended < REMEMBER_FOR:
            lasted = last.ended - last.started
            return f"ok (was down {lasted:.1f} s until {_clock(last.ended)}: {last.reason})"
        return "ok"


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
