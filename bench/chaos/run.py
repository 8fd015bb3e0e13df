"""One chaos run: start the topology, stream, inject the seeded faults, settle, check the ledger."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos import ledger
from bench.chaos.checks import (
    EDGE_MS,
    Sample,
    Sampler,
    final_checks,
    resources,
    settled_usage,
    wait_until,
)
from bench.chaos.clients import Api, Recorder, now_ms, steady_client
from bench.chaos.faults import Fault, Injector, schedule
from bench.chaos.plan import TIMER_USER, Plan
from bench.chaos.simctl import SimControl
from bench.chaos.topology import Distributed, Embedded, Topology, Usage

STARTUP_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0  # for the database to catch up and the channel set to settle at the end


@dataclass
class Outcome:
    plan: Plan
    faults: list[Fault]
    checks: list[ledger.Check]
    samples: list[Sample]
    window: tuple[int, int]
    maxmemory: int | None
    baseline: list[Usage | None]
    final_usage: list[Usage | None]
    notes: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return all(check.holds for check in self.checks)


class Run:
    """One mode's run, step by step; `execute` drives it and always tears the topology down."""

    def __init__(self, plan: Plan, directory: Path, say: Callable[[str], None]) -> None:
        self.plan = plan
        kind = Distributed if plan.mode == "distributed" else Embedded
        self.topology: Topology = kind(plan, directory)
        self.directory = directory
        self.say = say
        self.recorder = Recorder()
        self.stop = asyncio.Event()
        self.clients: list[asyncio.Task[None]] = []
        self.apis: dict[str, Api] = {}
        self.tokens: dict[str, str] = {}
        self.sim = SimControl(self.topology.sim_url)
        self.sampler = Sampler(self.topology, self.sim)
        self.sampling: asyncio.Task[None] | None = None
        self.notes: list[str] = []
        self.waiting_for: list[str] = []

    async def set_up(self) -> None:
        """Topology, users, subscriptions, streams (the serve baselines are read before them)."""
        plan, topology = self.plan, self.topology
        await topology.start()
        self.say(f"{plan.mode}: topology up in {self.directory}")
        replicas = topology.replicas
        for i, user in enumerate([*plan.users, *plan.storm_users, TIMER_USER]):
            api = self.apis[user] = Api(replicas[i % len(replicas)], user)
            self.tokens[user] = await api.sign_in()
        subscriptions = [(u, t, 0) for u, tickers in plan.users.items() for t in tickers]
        # A timer>0 client: its events are counted, not ledger-checked (it gets the latest only).
        subscriptions += [(TIMER_USER, t, 2) for t in plan.ledger_tickers[:3]]
        for user, ticker, timer in subscriptions:
            status = await self.apis[user].subscribe(ticker, timer=timer)
            if status not in (200, 201):
                raise RuntimeError(f"{user} could not subscribe {ticker}: {status}")
        expected = set(plan.tracked) | topology.stored_subscriptions()

        async def subscribed() -> bool:
            return ledger.channels(await self.sim.channels(), expected).holds

        await wait_until("upstream subscribed", subscribed, STARTUP_TIMEOUT)
        topology.open_gates()
        self.sampling = asyncio.create_task(self.sampler.run())
        timer_token = self.tokens.pop(TIMER_USER)
        for i, user in enumerate(plan.users):
            order = replicas[i % len(replicas) :] + replicas[: i % len(replicas)]
            resume = i % 2 == 0  # half resume with Last-Event-ID, half start afresh
            self._client(
                steady_client(
                    self.recorder,
                    name=user,
                    replicas=order,
                    token=self.tokens[user],
                    resume=resume,
                    stop=self.stop,
                    gates=topology.ready,
                )
            )
        self._client(
            steady_client(
                self.recorder,
                name=TIMER_USER,
                replicas=replicas,
                token=timer_token,
                resume=False,
                stop=self.stop,
                gates=topology.ready,
            )
        )
        tickers = plan.ledger_tickers

        def first_prices() -> bool:
            waiting = [t for t in tickers if not self.recorder.newest_after(t, 0)]
            self.waiting_for = waiting
            return not waiting

        try:
            await wait_until("first prices", first_prices, STARTUP_TIMEOUT)
        except AssertionError as error:
            raise AssertionError(f"{error}: none yet of {self.waiting_for}") from None

    def _client(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.clients.append(asyncio.create_task(coroutine))

    async def faults(self, seconds: float, start_ms: int, every_kind: bool) -> list[Fault]:
        """Faults for `seconds`; with `every_kind`, on until each kind of the mode has run once."""
        plan = self.plan
        storm_apis = [self.apis[u] for u in plan.storm_users]
        injector = Injector(
            self.topology,
            self.sim,
            self.recorder,
            storm=(storm_apis, plan.storm_tickers),
            tokens=self.tokens,
            seed=plan.seed,
        )
        done: list[Fault] = []
        quiet = random.Random(f"chaos-quiet:{plan.seed}")
        loop = asyncio.get_running_loop()
        end_at = loop.time() + seconds
        for fault in schedule(plan.seed, self.topology.faults, count=10_000):
            kinds_left = every_kind and len(done) < len(self.topology.faults)
            if loop.time() >= end_at and not kinds_left:  # the schedule has every kind first
                break
            self.say(f"  t+{(now_ms() - start_ms) / 1000:6.1f}s {fault.describe()}")
            await injector.run(fault, plan.ledger_tickers)
            done.append(fault)
            await asyncio.sleep(quiet.uniform(0.5, 1.5))  # quiet spells between faults are schedule
        return done

    async def settle(self, end_ms: int) -> None:
        """Clients leave; the database catches up with the window's end."""
        self.stop.set()
        await asyncio.gather(*self.clients, return_exceptions=True)
        for api in self.apis.values():
            await api.close()  # their keep-alive sockets would count against the fd baseline
        self.say("clients closed; settling")
        topology = self.topology

        async def caught_up() -> bool:
            newest = [await asyncio.to_thread(topology.newest, t) for t in self.plan.ledger_tickers]
            return all(n is not None and n >= end_ms - 1000 for n in newest)

        try:
            await wait_until("database caught up", caught_up, SETTLE_TIMEOUT)
        except AssertionError as error:
            self.notes.append(str(error))

    async def tear_down(self) -> None:
        self.stop.set()
        tasks = [*self.clients, *([self.sampling] if self.sampling else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for api in self.apis.values():
            await api.close()
        await self.sampler.close()
        await self.sim.close()
        await asyncio.to_thread(self.topology.stop)


async def execute(
    plan: Plan,
    seconds: float,
    directory: Path,
    say: Callable[[str], None] = print,
    *,
    every_kind: bool = True,
) -> Outcome:
    run = Run(plan, directory, say)
    try:
        await run.set_up()
        start_ms = now_ms()
        tickers = len(plan.ledger_tickers)
        say(f"streaming {tickers} tickers; faults for {seconds:.0f}s, seed {plan.seed}")
        faults = await run.faults(seconds, start_ms, every_kind)
        await asyncio.sleep(3)  # the last ticks of the window are produced
        end_ms = now_ms()
        await asyncio.sleep(EDGE_MS / 1000)  # and delivered: the window ends EDGE_MS before close
        await run.settle(end_ms)
        window = (start_ms, end_ms)
        timer = ", ".join(f"{t} {n}" for t, n in sorted(run.recorder.timer_events.items()))
        run.notes.append(f"timer=2 client's price events: {timer or 'none'}")
        checks = await final_checks(
            run.topology,
            run.sim,
            run.recorder,
            samples=run.sampler.samples,
            faults=faults,
            window=window,
        )
        baseline = run.topology.baselines
        final = await settled_usage(run.topology, baseline)
        checks.append(resources(run.topology, baseline, final))
        if run.sampling is not None:
            run.sampling.cancel()
        topology = run.topology
        maxmemory = topology.redis.maxmemory if isinstance(topology, Distributed) else None
        return Outcome(
            plan, faults, checks, run.sampler.samples, window, maxmemory, baseline, final, run.notes
        )
    finally:
        await run.tear_down()
