"""The seeded fault schedule and the code that applies each fault.

The schedule (which faults, in which order, with which parameters) is a pure function of the
seed and the mode's fault set, so `make chaos SEED=...` replays it; only the timing is real.
Faults run one after another: each is applied, lasts its time, and then the run waits until
prices flow again (the recovery time is measured) before a short quiet spell and the next one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos.clients import Api, Recorder, churn, now_ms, storm
from bench.chaos.simctl import SimControl
from bench.chaos.topology import Distributed, Topology

# fault -> weight in the draw (upstream faults are the common case, restarts the rare one)
WEIGHTS: dict[str, int] = {
    "drop": 3,
    "silence": 2,
    "refusal": 2,
    "latency": 2,
    "e10028": 2,
    "e11051": 2,
    "kill_ingest": 2,
    "kill_serve": 2,
    "kill_worker": 1,
    "redis_restart": 1,
    "postgres_restart": 1,
    "churn": 2,
    "storm": 2,
}
RECOVERY_TIMEOUT = 60.0  # prices must flow again within this after a fault ends


@dataclass
class Fault:
    kind: str
    params: dict[str, Any]
    # Filled in as it runs: wall-clock ms.
    started_ms: int = 0
    ended_ms: int = 0
    # First moment every ledger ticker had a tick newer than the fault's start; 0: never.
    resumed_ms: int = 0
    note: str = ""
    outcomes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}({params})"


def _seconds(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 1)


# fault -> its parameters, drawn from the schedule's generator
PARAMETERS: dict[str, Callable[[random.Random], dict[str, Any]]] = {
    "drop": lambda rng: {},
    "silence": lambda rng: {"seconds": _seconds(rng, 2, 6)},
    "refusal": lambda rng: {"seconds": _seconds(rng, 1, 4)},
    "latency": lambda rng: {
        "ms": rng.randrange(20, 300),
        "jitter_ms": rng.randrange(0, 200),
        "seconds": _seconds(rng, 3, 8),
    },
    "e10028": lambda rng: {"seconds": _seconds(rng, 0.5, 2)},
    "e11051": lambda rng: {"seconds": _seconds(rng, 2, 5)},
    "kill_ingest": lambda rng: {"down": _seconds(rng, 0.5, 4)},
    "kill_worker": lambda rng: {"down": _seconds(rng, 0.5, 4)},
    "kill_serve": lambda rng: {"replica": rng.randrange(2), "down": _seconds(rng, 0.5, 3)},
    "redis_restart": lambda rng: {},
    "postgres_restart": lambda rng: {},
    "churn": lambda rng: {"clients": rng.randrange(5, 20)},
    "storm": lambda rng: {"rounds": rng.randrange(3, 10)},
}


def schedule(seed: int, kinds: frozenset[str], count: int) -> list[Fault]:
    """`count` faults drawn by weight from `kinds`; every kind appears once before any repeats."""
    rng = random.Random(f"chaos:{seed}")
    names = sorted(kinds)
    first = rng.sample(names, k=len(names))
    rest = rng.choices(names, weights=[WEIGHTS[n] for n in names], k=max(0, count - len(names)))
    return [Fault(kind, PARAMETERS[kind](rng)) for kind in [*first, *rest][:count]]


class Injector:
    """Applies faults to the topology and the simulator, and lets clients misbehave."""

    def __init__(
        self,
        topology: Topology,
        sim: SimControl,
        recorder: Recorder,
        *,
        storm: tuple[list[Api], list[str]],  # the storm's users and the tickers they fight over
        tokens: dict[str, str],
        seed: int,
    ) -> None:
        self.topology = topology
        self.sim = sim
        self.recorder = recorder
        self.storm_apis, self.storm_tickers = storm
        self.tokens = tokens
        self.rng = random.Random(f"chaos-clients:{seed}")  # churn and storm choices

    async def apply(self, fault: Fault) -> None:
        fault.started_ms = now_ms()
        try:
            await self._apply(fault)
        finally:
            fault.ended_ms = now_ms()

    async def _apply(self, fault: Fault) -> None:
        p = fault.params
        sim, top = self.sim, self.topology
        match fault.kind:
            case "drop":
                await sim.call("sim/drop_connections")
            case "silence":
                await sim.call("sim/go_silent", {"seconds": p["seconds"]})
                await asyncio.sleep(p["seconds"])  # the fault lasts that long
            case "refusal":
                await sim.call("sim/refuse_connections", {"seconds": p["seconds"]})
                await sim.call("sim/drop_connections")
                await asyncio.sleep(p["seconds"])
            case "latency":
                await sim.call("sim/set_latency", {"ms": p["ms"], "jitter_ms": p["jitter_ms"]})
                await asyncio.sleep(p["seconds"])
                await sim.call("sim/set_latency", {"ms": 0, "jitter_ms": 0})
            case "e10028" | "e11051":
                code = int(fault.kind[1:])
                await sim.call("sim/fail_requests", {"code": code, "seconds": p["seconds"]})
                await asyncio.sleep(p["seconds"])
            case "kill_serve":
                await top.kill_serve(p["replica"] % len(top.serves), p["down"])
            case "churn":
                await churn(self.recorder, self.rng, top.replicas, self.tokens, p["clients"])
            case "storm":
                fault.outcomes = await storm(
                    self.recorder, self.rng, self.storm_apis, self.storm_tickers, p["rounds"]
                )
            case _:
                await self._apply_distributed(fault)

    async def _apply_distributed(self, fault: Fault) -> None:
        top = self.topology
        if not isinstance(top, Distributed):
            raise TypeError(f"{fault.kind} needs the distributed topology")
        match fault.kind:
            case "kill_ingest":
                fault.note = await top.kill_ingest(fault.params["down"])
            case "kill_worker":
                await top.kill_worker(fault.params["down"])
            case "redis_restart":
                await top.restart_redis()
            case "postgres_restart":
                await top.restart_postgres()
            case other:
                raise ValueError(f"unknown fault {other}")

    async def run(self, fault: Fault, tickers: list[str]) -> None:
        """Apply the fault, then wait until prices flow again (or give up, noting it)."""
        watch = asyncio.ensure_future(self._resumed(fault, tickers))
        try:
            await self.apply(fault)
            await asyncio.wait_for(asyncio.shield(watch), RECOVERY_TIMEOUT)
        except TimeoutError:
            fault.note = (fault.note + "; " if fault.note else "") + "prices did not resume"
        finally:
            watch.cancel()

    async def _resumed(self, fault: Fault, tickers: list[str]) -> None:
        while not all(  # noqa: ASYNC110 (the recorder has no event to await)
            self.recorder.newest_after(t, fault.started_ms) for t in tickers
        ):
            await asyncio.sleep(0.05)  # the recorder has no event to await; poll it
        fault.resumed_ms = now_ms()
