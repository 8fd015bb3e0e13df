"""`python -m bench.chaos --minutes 30 --seed 7`: both modes, then bench/results/chaos.md.

Exit status 1 when an invariant broke; the summary printed says which, with the seed and tick ids.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
from pathlib import Path

from bench.chaos.plan import make_plan
from bench.chaos.report import new_report, summary, write
from bench.chaos.run import Outcome, execute
from bench.common import RESULTS_DIR, exit_on_sigterm


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos")
    parser.add_argument("--minutes", type=float, default=30.0, help="faults per mode")
    parser.add_argument(
        "--seed", type=int, default=None, help="the fault schedule (random: printed)"
    )
    parser.add_argument("--mode", choices=("both", "distributed", "embedded"), default="both")
    parser.add_argument("--tickers", type=int, default=20)
    parser.add_argument("--tick-interval", type=float, default=0.1)
    parser.add_argument(
        "--embedded-share", type=float, default=0.5, help="embedded minutes / distributed"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    exit_on_sigterm()
    modes = ["distributed", "embedded"] if args.mode == "both" else [args.mode]
    report = new_report()
    outcomes: list[Outcome] = []
    for mode in modes:
        minutes = args.minutes * (
            args.embedded_share if mode == "embedded" and args.mode == "both" else 1
        )
        plan = make_plan(mode, seed, args.tickers, args.tick_interval)
        directory = Path(tempfile.mkdtemp(prefix=f"chaos-{mode}-"))
        outcome = asyncio.run(execute(plan, minutes * 60, directory))
        print(summary(outcome), flush=True)
        if outcome.holds:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"logs kept in {directory}", flush=True)
        outcomes.append(outcome)
    write(report, outcomes, args.minutes, RESULTS_DIR / "chaos.md")
    return 0 if all(o.holds for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
