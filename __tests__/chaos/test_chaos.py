"""A short seeded chaos run of each mode, checked against the simulator's ground truth.

The whole topology runs as real processes on loopback (bench/chaos/topology.py); the seeded
schedule puts every fault of the mode early, so even this short run meets each one. A broken
invariant fails with the seed (`make chaos SEED=... MODE=...` replays the schedule) and the tick
ids involved. `make chaos` is the long run.
"""

from pathlib import Path

import pytest

from bench.chaos.plan import make_plan
from bench.chaos.report import summary
from bench.chaos.run import execute
from bench.chaos.topology import Distributed, Embedded

SEED = 20261202
TICKERS = 12
TICK_INTERVAL = 0.2  # 60 ticks/s through the gateway: heavy enough, and safe on 2 loaded cores


@pytest.mark.timeout(300)  # the run itself ends in about half that; a loaded machine stretches it
@pytest.mark.parametrize(("mode", "seconds"), [("distributed", 60), ("embedded", 25)])
async def test_chaos_run_keeps_every_invariant(mode: str, seconds: float, tmp_path: Path) -> None:
    plan = make_plan(mode, SEED, TICKERS, TICK_INTERVAL)
    outcome = await execute(plan, seconds, tmp_path)
    assert outcome.checks[0].counts["produced"] > 0, summary(outcome)
    expected = (Distributed if mode == "distributed" else Embedded).faults
    assert {fault.kind for fault in outcome.faults} == expected, summary(outcome)
    if not outcome.holds:  # the summary, not the dataclass's repr
        pytest.fail(f"{summary(outcome)}\nlogs: {tmp_path}", pytrace=False)
