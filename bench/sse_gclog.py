"""Run a Python program with every garbage collection of generation >= 1 logged, with its pause.

    python -m bench.sse_gclog LOGFILE PROGRAM [ARGS...]

PROGRAM is a Python script (e.g. `.venv/bin/cryptomarket`) or `-m MODULE`. Each line of LOGFILE:
`<unix time at the end> <generation> <pause ms> <collected>`. A full (generation 2) collection
stops the event loop for as long as it walks every tracked object, so with thousands of open
streams its pause shows up directly as tick-to-client latency.
"""

from __future__ import annotations

import gc
import runpy
import sys
import time
from typing import Any


def main() -> None:
    log_path, program, *rest = sys.argv[1:]
    log = open(log_path, "w", buffering=1)  # noqa: SIM115  # open for the process's life
    started = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif info["generation"] >= 1:
            pause = 1000 * (time.perf_counter() - started[0])
            log.write(f"{time.time():.3f} {info['generation']} {pause:.2f} {info['collected']}\n")

    gc.callbacks.append(on_gc)
    if program == "-m":
        module, *rest = rest
        sys.argv = [module, *rest]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = [program, *rest]
        runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
