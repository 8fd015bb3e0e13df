"""Run a program on the stdlib asyncio loop, timing each round: what a stall was made of.

    python -m bench.stall_probe THRESHOLD_MS PROGRAM [ARGS...]

The server's loop monitor says a stall happened (its timer fired late), not what ran meanwhile:
one slow callback, or a thousand quick ones that became ready together. Here every callback is
timed, and a round longer than THRESHOLD_MS is written to stderr with what ran in it, grouped by
the coroutine a task step ran and where it stopped (or the plain callback), the most time first.
The stdlib loop is slower than uvloop, which the product runs on, but what becomes ready together
is the same. PROGRAM is a script (e.g. `.venv/bin/cryptomarket`); uvicorn is told to use this loop.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import asyncio.events
import collections
import runpy
import sys
import time
from typing import Any

import uvicorn

TOP = 12


def describe(handle: asyncio.Handle) -> str:
    callback: Any = handle._callback  # type: ignore[attr-defined]  # what the round ran
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro: Any = owner.get_coro()
        name = getattr(coro, "__qualname__", repr(coro))
        frame = getattr(coro, "cr_frame", None)
        while frame is not None:  # the innermost awaited coroutine: where this step stopped
            inner = getattr(coro, "cr_await", None)
            if inner is None or getattr(inner, "cr_frame", None) is None:
                break
            coro, frame = inner, inner.cr_frame
        where = f" @ {frame.f_code.co_qualname}:{frame.f_lineno}" if frame is not None else ""
        return f"task {name}{where}"
    return getattr(callback, "__qualname__", None) or repr(callback)[:80]


def install(threshold_ms: float) -> None:
    run_handle = asyncio.events.Handle._run
    run_once = asyncio.base_events.BaseEventLoop._run_once  # type: ignore[attr-defined]
    spent: dict[str, float] = {}
    calls: collections.Counter[str] = collections.Counter()

    def timed_run(self: asyncio.Handle) -> None:
        label = describe(self)  # before: a step's coroutine moves on
        started = time.perf_counter()
        try:
            run_handle(self)
        finally:
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - started
            calls[label] += 1

    def timed_round(self: asyncio.base_events.BaseEventLoop) -> None:
        spent.clear()
        calls.clear()
        run_once(self)
        took = sum(spent.values()) * 1000  # the callbacks' time: not the wait for sockets
        if took > threshold_ms:
            lines = [f"stall-probe: a round of {took:.0f} ms, {sum(calls.values())} callbacks"]
            for label, seconds in sorted(spent.items(), key=lambda kv: -kv[1])[:TOP]:
                lines.append(f"    {seconds * 1000:8.1f} ms {calls[label]:6d}x  {label}")
            sys.stderr.write("\n".join(lines) + "\n")

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    asyncio.base_events.BaseEventLoop._run_once = timed_round  # type: ignore[attr-defined]

    config_init = uvicorn.Config.__init__

    def stdlib_loop(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        kwargs["loop"] = "asyncio"
        config_init(self, *args, **kwargs)

    uvicorn.Config.__init__ = stdlib_loop  # type: ignore[method-assign]


def main() -> None:
    threshold, program, *rest = sys.argv[1:]
    install(float(threshold))
    sys.argv = [program, *rest]
    runpy.run_path(program, run_name="__main__")


if __name__ == "__main__":
    main()
