"""Upstream and database faults during live streaming (issue 6, item 1).

Each test streams every btc_usd tick (timer=0) to a client through a real uvicorn server, while
the simulator ticks every 50 ms and heartbeats are 1 s (PROJECT_MODE=testing: a socket silent
for 3 s is dead, prices quiet for 3 s are stale). Then it injects one fault and checks that
- the client's stream stays open (one `connected`, never ended) and its price ids strictly increase,
- `status` events say what happened (reconnecting or stale, then connected),
- prices resume within the bound stated in the test once the fault ends,
- the store holds every tick the simulator still has, once, and a recorded gap for the rest.
"""

import asyncio
import time

import pytest

from __tests__.helpers import eventually
from __tests__.reliability.faults import (
    TICKER,
    Watched,
    requests_made,
    store_accounts_for_everything,
    watching,
)
from __tests__.servers import PostgresServer
from __tests__.simulated import sim_control
from cryptomarket.deribit.simulator import Simulator


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def resumes_within(watched: Watched, fault_end_ms: int, bound: float) -> float:
    """Seconds from the fault's end to the first price of a tick made after it; at most `bound`."""
    loop = asyncio.get_running_loop()
    start = loop.time() + max(0.0, (fault_end_ms - now_ms()) / 1000)
    await eventually(
        lambda: any(ts > fault_end_ms for ts in watched.prices()),
        timeout=(start - loop.time()) + bound,
        what=f"prices within {bound}s of the fault's end",
    )
    return loop.time() - start


async def settled(watched: Watched, mark: int, *expected: str, timeout: float = 15) -> list[str]:
    """Wait until the upstream is announced connected again after the `expected` states."""
    await eventually(
        lambda: (
            all(state in watched.statuses(mark) for state in expected)
            and watched.statuses(mark)[-1:] == ["connected"]
        ),
        timeout=timeout,
        what=f"status {' / '.join(expected)} then connected; saw {watched.statuses(mark)}",
    )
    return watched.statuses(mark)


@pytest.mark.parametrize("database_kind", ["sqlite", "postgresql"])
async def test_dropped_connections(simulator: Simulator, database_url: str) -> None:
    async with watching(simulator, database_url) as watched:
        since, mark = watched.prices()[-1], len(watched.events)
        await sim_control(simulator, ("sim/drop_connections", {}))
        dropped_at = now_ms()
        await settled(watched, mark, "reconnecting")
        # Reconnect backoff starts at 0.5 s: prices are back well within 3 s.
        assert await resumes_within(watched, dropped_at, bound=3.0) <= 3.0
        until = watched.latest_tick()
        await store_accounts_for_everything(watched, since, until)
        watched.assert_same_stream()


async def test_connections_refused_for_a_while(simulator: Simulator, database_url: str) -> None:
    async with watching(simulator, database_url) as watched:
        since, mark = watched.prices()[-1], len(watched.events)
        await sim_control(
            simulator, ("sim/refuse_connections", {"seconds": 2}), ("sim/drop_connections", {})
        )
        allowed_at = now_ms() + 2000
        await settled(watched, mark, "reconnecting")
        assert watched.simulator.calls["public/set_heartbeat"] >= 2
        # Backoff during 2 s of refusals reaches at most a 2 s ceiling: back within 3 s of the end.
        assert await resumes_within(watched, allowed_at, bound=3.0) <= 3.0
        until = watched.latest_tick()
        # About 40 ticks were made while nobody could connect: all backfilled, none a gap.
        await store_accounts_for_everything(watched, since, until)
        assert len([ts for ts, _ in simulator.history(TICKER) if since < ts < allowed_at]) > 30
        watched.assert_same_stream()


async def test_silent_upstream_is_treated_as_dead(simulator: Simulator, database_url: str) -> None:
    async with watching(simulator, database_url) as watched:
        since, mark = watched.prices()[-1], len(watched.events)
        await sim_control(simulator, ("sim/go_silent", {"seconds": 6}))
        silent_from = now_ms()
        await settled(watched, mark, "reconnecting")
        # Silence is noticed after 3 s (3 heartbeats' worth); a fresh socket is not silent,
        # so prices are back within 5 s of the fault's start, before the silence even ends.
        assert await resumes_within(watched, silent_from, bound=5.0) <= 5.0
        until = watched.latest_tick()
        await store_accounts_for_everything(watched, since, until)
        watched.assert_same_stream()


async def test_paused_ticks_are_reported_stale(simulator: Simulator, database_url: str) -> None:
    async with watching(simulator, database_url) as watched:
        since, mark = watched.prices()[-1], len(watched.events)
        await sim_control(simulator, ("sim/pause_ticks", {"seconds": 5}))
        resumed_at = now_ms() + 5000
        statuses = await settled(watched, mark, "stale")
        assert "reconnecting" not in statuses  # the socket was fine all along
        # Nothing to reconnect: the first tick after the pause reaches the stream within 1 s.
        assert await resumes_within(watched, resumed_at, bound=1.0) <= 1.0
        until = watched.latest_tick()
        await store_accounts_for_everything(watched, since, until)
        # No reconnect, so every tick of the simulator reached the stream, in order.
        seen = [ts for ts in watched.prices() if ts >= since]
        assert seen == [ts for ts, _ in simulator.history(TICKER) if since <= ts <= seen[-1]]
        watched.assert_same_stream()


async def test_latency_and_jitter(simulator: Simulator, database_url: str) -> None:
    async with watching(simulator, database_url) as watched:
        since, mark = watched.prices()[-1], len(watched.events)
        await sim_control(simulator, ("sim/set_latency", {"ms": 400, "jitter_ms": 300}))
        slow_from = now_ms()
        await eventually(
            lambda: any(ts > slow_from + 3000 for ts in watched.prices()),
            what="three seconds of slow prices",
        )
        await sim_control(simulator, ("sim/set_latency", {"ms": 0}))
        fast_from = now_ms()
        # Frames already delayed arrive within the 0.4 s latency, then at once.
        assert await resumes_within(watched, fast_from, bound=1.0) <= 1.0
        assert watched.statuses(mark) == []  # under the heartbeat: nothing to report
        until = watched.latest_tick()
        await store_accounts_for_everything(watched, since, until)
        seen = [ts for ts in watched.prices() if ts >= since]
        assert seen == [ts for ts, _ in simulator.history(TICKER) if since <= ts <= seen[-1]]
        watched.assert_same_stream()


async def test_history_unavailable_is_recorded_as_a_gap(
    simulator: Simulator, database_url: str
) -> None:
    async with watching(simulator, database_url) as watched:
        since, mark = watched.prices()[-1], len(watched.events)
        no_history = {"code": 11051, "seconds": 60, "methods": ["public/get_index_chart_data"]}
        await sim_control(
            simulator,
            ("sim/fail_requests", no_history),
            ("sim/refuse_connections", {"seconds": 1}),
            ("sim/drop_connections", {}),
        )
        await settled(watched, mark, "reconnecting")
        await eventually(lambda: watched.gaps() != [], what="a gap event on the stream")
        [gap] = watched.gaps()
        assert gap["ticker"] == TICKER
        assert since < gap["from"] <= gap["to"] < now_ms()
        until = watched.latest_tick()
        gaps = await store_accounts_for_everything(watched, since, until, gaps_expected=True)
        assert [(a, b) for a, b, _ in gaps] == [(gap["from"], gap["to"])]
        assert "backfill failed" in gaps[0][2]
        watched.assert_same_stream()
        await sim_control(simulator, ("sim/fail_requests", {**no_history, "seconds": 0}))


@pytest.mark.parametrize("code", [10028, 11051])
async def test_deribit_refusing_requests(
    simulator: Simulator, database_url: str, code: int
) -> None:
    async with watching(simulator, database_url) as watched:
        since, mark = watched.prices()[-1], len(watched.events)
        before = requests_made(simulator)
        await sim_control(simulator, ("sim/fail_requests", {"code": code, "seconds": 3}))
        fault_end = now_ms() + 3000
        await eventually(lambda: now_ms() > fault_end, timeout=5, what="the fault to end")
        during = requests_made(simulator) - before
        # Backing off, not hammering: every connection retries with a doubling delay, so the
        # whole service sent at most 30 requests in 3 s (Deribit allows 20 per second).
        assert 0 < during <= 30, during
        assert simulator.errors[code] >= 1
        await settled(watched, mark, "reconnecting")
        # The delay reached after 3 s of failures is at most 4 s: prices back within 6 s.
        assert await resumes_within(watched, fault_end, bound=6.0) <= 6.0
        until = watched.latest_tick()
        await store_accounts_for_everything(watched, since, until)
        watched.assert_same_stream()


async def test_database_restart(simulator: Simulator, postgres_server: PostgresServer) -> None:
    name = "faults_restart"
    postgres_server.create_database(name)
    try:
        async with watching(simulator, postgres_server.url(database=name)) as watched:
            since = watched.prices()[-1]
            writer = watched.service.runtime.writer
            # A restart the writer notices: down until a write has failed, then up again.
            await asyncio.to_thread(postgres_server.stop)
            await eventually(lambda: not writer.healthy, what="the writer to see the outage")
            down_at = now_ms()
            # The stream never depended on the database: prices flow while it is down.
            await eventually(lambda: any(ts > down_at + 500 for ts in watched.prices()))
            await asyncio.to_thread(postgres_server.start)
            back_at = now_ms()
            await eventually(lambda: any(ts > back_at for ts in watched.prices()))
            until = watched.latest_tick()
            await store_accounts_for_everything(watched, since, until)
            assert writer.failures > 0  # the restart was an outage for the writer
            assert writer.dropped == 0
            assert writer.healthy
            watched.assert_same_stream()
    finally:
        if not postgres_server.running:
            postgres_server.start()
        postgres_server.drop_database(name)
