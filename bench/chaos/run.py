"""One chaos run: start the topology, stream, inject the seeded faults, settle, check the ledger."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.chaos import ledger
from bench.chaos.clients import Api, Recorder, now_ms, steady_client
from bench.chaos.faults import Fault, Injector, schedule
from bench.chaos.simctl import SimControl
from bench.chaos.topology import TIMER_USER, Distributed, Embedded, Plan, Topology, Usage

try:  # helper sim's branch moves the index list to its own module
    from cryptomarket.deribit.simulator.indexes import INDEX_NAMES
except ImportError:
    from cryptomarket.deribit.simulator.market import INDEX_NAMES

STARTUP_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0  # for the database to catch up and the channel set to settle at the end
EDGE_MS = 10_000  # a stream's first and last 10 s: ticks may still be on their way
FAILOVER_BOUND_MS = 3_500  # README: a standby takes over within about 3.5 s
FAILOVER_ALLOWANCE_MS = 4_000  # scheduling on a loaded 2-core machine, stated in the report
RSS_SLACK = 64 * 2**20  # Python keeps freed arenas: back near the baseline, not to the byte
SAMPLE_INTERVAL = 1.0
BLAME_AHEAD_MS = 3_000  # a fault starting this soon after a lost tick is named as well


@dataclass
class Sample:
    at_ms: int
    redis_used: int | None
    upstream: list[list[str]]  # channels of each upstream connection that has any
    serves: list[Usage | None]


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
    storm_only = [n for n in INDEX_NAMES if "-" not in n and n not in names][:3]
    storm_tickers = sorted({*rng.sample(held, k=2), tracked[0], *storm_only})
    storm_users = ["storm0", "storm1", "storm2"]
    return Plan(mode, seed, tick_interval, tracked, users, storm_users, storm_tickers)


class Sampler:
    def __init__(self, topology: Topology, sim: SimControl) -> None:
        self.topology = topology
        self.sim = sim
        self.samples: list[Sample] = []
        self.redis: Redis | None = None

    async def run(self) -> None:
        if isinstance(self.topology, Distributed):  # started by now
            self.redis = Redis.from_url(self.topology.redis.url, socket_timeout=2)
        while True:
            used = None
            if self.redis is not None:
                with contextlib.suppress(Exception):  # a restarting Redis: no sample, not a failure
                    used = int((await self.redis.info("memory"))["used_memory"])
            upstream = await self.sim.channels()
            self.samples.append(Sample(now_ms(), used, upstream, self.topology.serve_usage()))
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


async def _until(what: str, check: object, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        result = check() if callable(check) else check
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.2)  # the conditions polled here have no event
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


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

        await _until("upstream subscribed", subscribed, STARTUP_TIMEOUT)
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
            await _until("first prices", first_prices, STARTUP_TIMEOUT)
        except AssertionError as error:
            raise AssertionError(f"{error}: none yet of {self.waiting_for}") from None

    def _client(self, coroutine: Coroutine[Any, Any, None]) -> None:
        self.clients.append(asyncio.create_task(coroutine))

    async def faults(self, seconds: float, start_ms: int) -> list[Fault]:
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
            if loop.time() >= end_at:
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
            await _until("database caught up", caught_up, SETTLE_TIMEOUT)
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
    plan: Plan, seconds: float, directory: Path, say: Callable[[str], None] = print
) -> Outcome:
    run = Run(plan, directory, say)
    try:
        await run.set_up()
        start_ms = now_ms()
        tickers = len(plan.ledger_tickers)
        say(f"streaming {tickers} tickers; faults for {seconds:.0f}s, seed {plan.seed}")
        faults = await run.faults(seconds, start_ms)
        await asyncio.sleep(3)  # the last ticks of the window are produced
        end_ms = now_ms()
        await asyncio.sleep(EDGE_MS / 1000)  # and delivered: the window ends EDGE_MS before close
        await run.settle(end_ms)
        window = (start_ms, end_ms)
        timer = ", ".join(f"{t} {n}" for t, n in sorted(run.recorder.timer_events.items()))
        run.notes.append(f"timer=2 client's price events: {timer or 'none'}")
        checks = await _checks(run, faults, window)
        baseline = run.topology.baselines
        final = await _settled_usage(run.topology, baseline)
        checks.append(_resources(run.topology, baseline, final))
        if run.sampling is not None:
            run.sampling.cancel()
        topology = run.topology
        maxmemory = topology.redis.maxmemory if isinstance(topology, Distributed) else None
        return Outcome(
            plan, faults, checks, run.sampler.samples, window, maxmemory, baseline, final, run.notes
        )
    finally:
        await run.tear_down()


async def _checks(run: Run, faults: list[Fault], window: tuple[int, int]) -> list[ledger.Check]:
    topology, sim, plan, sampler = run.topology, run.sim, run.plan, run.sampler
    start_ms, end_ms = window
    produced = {t: await sim.produced(t, start_ms, end_ms) for t in plan.ledger_tickers}
    rows = {t: await asyncio.to_thread(topology.rows, t, start_ms, end_ms) for t in produced}
    gaps = await asyncio.to_thread(topology.gaps)
    gap_log = await asyncio.to_thread(topology.gap_log)

    def at(fault: Fault) -> str:
        return f"{fault.describe()} at t+{(fault.started_ms - start_ms) / 1000:.1f}s"

    def blame(ts: int) -> str:
        """The fault before the tick, and the next one if it came right after (a tick in flight
        when Redis restarts is lost by the restart, not by what came before)."""
        before = [f for f in faults if f.started_ms <= ts]
        soon = [f for f in faults if ts < f.started_ms <= ts + BLAME_AHEAD_MS]
        text = at(before[-1]) if before else "no fault"
        return text + (f", then {at(soon[0])}" if soon else "")

    checks = [
        ledger.database(produced, rows, gaps, gap_log, blame),
        ledger.streams(run.recorder.connections, produced, window, EDGE_MS, blame),
    ]
    expected = set(plan.tracked) | await asyncio.to_thread(topology.stored_subscriptions)
    found: list[list[str]] = []

    async def settled() -> bool:
        nonlocal found
        found = await sim.channels()
        return ledger.channels(found, expected).holds

    with contextlib.suppress(AssertionError):
        await _until("channels settled", settled, 10)
    checks.append(ledger.channels(found, expected))
    checks.append(_lease(sampler.samples))
    checks.append(_failover(faults))
    if isinstance(topology, Distributed):
        checks.append(_redis_memory(sampler.samples, topology.redis.maxmemory))
    checks.append(_resumed(faults))
    return checks


def _lease(samples: list[Sample]) -> ledger.Check:
    """At most one ingest subscribed upstream at any sample (the lease's promise, seen upstream)."""
    doubled = [s for s in samples if len(s.upstream) > 1]
    details = [f"{len(s.upstream)} upstream market-data connections at {s.at_ms}" for s in doubled]
    counts = {"samples": len(samples), "with_two_leaders": len(doubled)}
    return ledger.Check("at most one ingest upstream at a time", not doubled, counts, details)


def _failover(faults: list[Fault]) -> ledger.Check:
    bound = FAILOVER_BOUND_MS + FAILOVER_ALLOWANCE_MS
    kills = [f for f in faults if f.kind == "kill_ingest"]
    slow = [f for f in kills if not f.resumed_ms or f.resumed_ms - f.started_ms > bound]
    details = [
        f"{f.describe()} at {f.started_ms}: prices back after "
        f"{(f.resumed_ms - f.started_ms) / 1000 if f.resumed_ms else float('inf'):.1f}s"
        for f in slow
    ]
    worst = max((f.resumed_ms - f.started_ms for f in kills if f.resumed_ms), default=0)
    counts = {"ingest_kills": len(kills), "over_bound": len(slow), "worst_ms": worst}
    return ledger.Check(
        f"prices resume within {bound / 1000:.1f}s of an ingest kill", not slow, counts, details
    )


def _resumed(faults: list[Fault]) -> ledger.Check:
    stuck = [f for f in faults if not f.resumed_ms]
    details = [f"{f.describe()} at {f.started_ms}: prices did not resume" for f in stuck]
    return ledger.Check(
        "prices resume after every fault",
        not stuck,
        {"faults": len(faults), "stuck": len(stuck)},
        details,
    )


def _redis_memory(samples: list[Sample], maxmemory: int) -> ledger.Check:
    used = [s.redis_used for s in samples if s.redis_used is not None]
    peak = max(used, default=0)
    counts = {"samples": len(used), "peak_bytes": peak, "limit_bytes": maxmemory}
    details = (
        [f"peak {peak / 2**20:.1f} MiB reached the limit {maxmemory / 2**20:.0f} MiB"]
        if peak >= maxmemory
        else []
    )
    return ledger.Check("Redis memory below maxmemory", peak < maxmemory, counts, details)


async def _settled_usage(topology: Topology, baseline: list[Usage | None]) -> list[Usage | None]:
    usage = topology.serve_usage()

    def back() -> bool:
        nonlocal usage
        usage = topology.serve_usage()
        return all(b is None or _back(b, u) for b, u in zip(baseline, usage, strict=True))

    with contextlib.suppress(AssertionError):
        await _until("serve resources back to baseline", back, 15)
    return usage


def _back(baseline: Usage, now: Usage | None) -> bool:
    return (
        now is not None
        and now.served == 0  # every client left, the harness's own HTTP clients too
        and now.rss <= baseline.rss + RSS_SLACK
    )


def _resources(
    topology: Topology, baseline: list[Usage | None], final: list[Usage | None]
) -> ledger.Check:
    details, over = [], 0
    for i, (b, u) in enumerate(zip(baseline, final, strict=True)):
        if b is None or u is None:
            continue
        line = (
            f"serve {i}: client sockets {b.served} -> {u.served}, outgoing {b.outgoing} -> "
            f"{u.outgoing}, other fds {b.other_fds} -> {u.other_fds}, "
            f"RSS {b.rss / 2**20:.0f} -> {u.rss / 2**20:.0f} MiB"
        )
        if not _back(b, u):
            over += 1
            details.append(f"{line} (not back; TCP: {topology.sockets(i)})")
        else:
            details.append(line)
    counts = {"serves": len(final), "not_back": over}
    name = f"serve RSS back to baseline (+{RSS_SLACK // 2**20} MiB), no client socket left"
    return ledger.Check(name, over == 0, counts, details)
