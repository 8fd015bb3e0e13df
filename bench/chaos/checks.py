"""What is sampled during a run, and the invariants checked at its end."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from redis.asyncio import Redis

from bench.chaos import ledger
from bench.chaos.clients import Recorder, now_ms
from bench.chaos.faults import Fault
from bench.chaos.plan import STORE_INTERVAL_MS
from bench.chaos.simctl import SimControl
from bench.chaos.topology import Distributed, Topology, Usage

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
    redis_evicted: int | None = None  # evicted_keys since that Redis started
    redis_errors: int | None = None  # errorstat_OOM count since that Redis started (OOM refusals)


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
            used = evicted = oom = None
            if self.redis is not None:
                with contextlib.suppress(Exception):  # a restarting Redis: no sample, not a failure
                    used = int((await self.redis.info("memory"))["used_memory"])
                    evicted = int((await self.redis.info("stats"))["evicted_keys"])
                    errors = await self.redis.info("errorstats")
                    oom = int(errors.get("errorstat_OOM", {}).get("count", 0))
            upstream = await self.sim.channels()
            usage = self.topology.serve_usage()
            self.samples.append(Sample(now_ms(), used, upstream, usage, evicted, oom))
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()


async def wait_until(what: str, check: object, timeout: float) -> None:
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


async def final_checks(
    topology: Topology,
    sim: SimControl,
    recorder: Recorder,
    *,
    samples: list[Sample],
    faults: list[Fault],
    window: tuple[int, int],
) -> list[ledger.Check]:
    """Every invariant but the serve processes' footprint (`resources`, after they settled)."""
    plan = topology.plan
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
        ledger.database(produced, rows, gaps, gap_log, blame, store_interval_ms=STORE_INTERVAL_MS),
        ledger.streams(recorder.connections, produced, window, EDGE_MS, blame),
    ]
    expected = set(plan.tracked) | await asyncio.to_thread(topology.stored_subscriptions)
    found: list[list[str]] = []

    async def settled() -> bool:
        nonlocal found
        found = await sim.channels()
        return ledger.channels(found, expected).holds

    with contextlib.suppress(AssertionError):
        await wait_until("channels settled", settled, 10)
    checks.append(ledger.channels(found, expected))
    checks.append(_lease(samples))
    checks.append(_failover(faults))
    if isinstance(topology, Distributed):
        checks.append(_redis_memory(samples, topology.redis.maxmemory))
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
    evicted = _increases([s.redis_evicted for s in samples])
    refused = _increases([s.redis_errors for s in samples])
    counts = {"samples": len(used), "peak_bytes": peak, "limit_bytes": maxmemory}
    counts |= {"evicted_keys": evicted, "oom_refusals": refused}
    details = []
    if peak >= maxmemory:
        details.append(f"peak {peak / 2**20:.1f} MiB reached the limit {maxmemory / 2**20:.0f} MiB")
        first = next(s for s in samples if s.redis_used is not None and s.redis_used >= maxmemory)
        details.append(f"first at {first.at_ms}")
    if evicted or refused:
        details.append(f"{evicted} key(s) evicted, {refused} command(s) refused with OOM")
    holds = peak < maxmemory and not evicted and not refused
    return ledger.Check("Redis memory below maxmemory, nothing evicted", holds, counts, details)


def _increases(values: list[int | None]) -> int:
    """The total growth of a counter that restarts from 0 with its Redis."""
    total, last = 0, 0
    for value in values:
        if value is None:
            continue
        total += value - last if value >= last else value
        last = value
    return total


async def settled_usage(topology: Topology, baseline: list[Usage | None]) -> list[Usage | None]:
    usage = topology.serve_usage()

    def back() -> bool:
        nonlocal usage
        usage = topology.serve_usage()
        return all(b is None or _back(b, u) for b, u in zip(baseline, usage, strict=True))

    with contextlib.suppress(AssertionError):
        await wait_until("serve resources back to baseline", back, 15)
    return usage


def _back(baseline: Usage, now: Usage | None) -> bool:
    return (
        now is not None
        and now.served == 0  # every client left, the harness's own HTTP clients too
        and now.rss <= baseline.rss + RSS_SLACK
    )


def resources(
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
