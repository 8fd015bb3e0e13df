"""Run a Python program under tracemalloc, writing a snapshot of its heap every INTERVAL seconds.

    python -m bench.tracemalloc_run DIR INTERVAL PROGRAM [ARGS...]
    python -m bench.tracemalloc_run --compare DIR      # growth between the snapshots, by line

PROGRAM is a script (e.g. `.venv/bin/cryptomarket`). Snapshots go to DIR/heap-<n>.pickle, taken
from a thread (the program's event loop is not touched). `--compare` prints, for the second and
the last snapshot, the lines whose allocations grew the most: where a slow rise of RSS comes from
when it is Python memory, and that it is not when they add up to far less than the rise.
"""

from __future__ import annotations

import runpy
import sys
import threading
import tracemalloc
from pathlib import Path

FRAMES = 8


def run(directory: Path, interval: float, program: str, rest: list[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tracemalloc.start(FRAMES)

    def dump() -> None:
        n = 0
        while not stopped.wait(interval):
            snapshot = tracemalloc.take_snapshot()
            snapshot.dump(str(directory / f"heap-{n:03d}.pickle"))
            n += 1

    stopped = threading.Event()
    threading.Thread(target=dump, name="tracemalloc-dump", daemon=True).start()
    sys.argv = [program, *rest]
    try:
        runpy.run_path(program, run_name="__main__")
    finally:
        stopped.set()


def compare(directory: Path, top: int = 25) -> None:
    paths = sorted(directory.glob("heap-*.pickle"))
    if len(paths) < 3:
        raise SystemExit(f"{len(paths)} snapshot(s) in {directory}: need at least 3")
    first, last = (tracemalloc.Snapshot.load(str(p)) for p in (paths[1], paths[-1]))
    totals = [
        sum(s.size for s in tracemalloc.Snapshot.load(str(p)).statistics("filename")) for p in paths
    ]
    print("traced Python memory per snapshot (MiB):", " ".join(f"{t / 2**20:.1f}" for t in totals))
    print(f"\n-- growth from {paths[1].name} to {paths[-1].name}, by line")
    for stat in last.compare_to(first, "lineno")[:top]:
        where = stat.traceback.format()[-1].strip()
        print(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks  {where}")
    print("\n-- the same, by whole traceback")
    for stat in last.compare_to(first, "traceback")[: top // 3]:
        print(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks")
        for line in stat.traceback.format():
            print("      " + line)


def main() -> None:
    if sys.argv[1] == "--compare":
        compare(Path(sys.argv[2]))
        return
    directory, interval, program, *rest = sys.argv[1:]
    run(Path(directory), float(interval), program, rest)


if __name__ == "__main__":
    main()
