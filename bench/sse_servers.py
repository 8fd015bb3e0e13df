"""The SSE servers the fan-out benchmarks measure, started fresh for each run.

`cryptomarket serve` in embedded mode (its users signed in with the simulator's key and each
subscribed at timer=0), sse-starlette's minimal broadcaster (bench/sse_baseline.py) and the raw
floor (bench/sse_raw.py, a bare asyncio protocol writing each frame to every socket); what every
run of a benchmark shares (`Bench`), and the raw requests the load generators send.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import psutil

from bench.sse_common import (
    HOST,
    PYTHON,
    ROOT,
    Child,
    clean_env,
    cryptomarket_command,
    free_port,
    start,
    streams_env,
    wait_port,
)

if TYPE_CHECKING:
    from bench.nginx_front import Front
    from bench.sse_measure import UpstreamProbe

TICKER = "btc_usd"
SIM_CLIENT_ID, SIM_CLIENT_SECRET = "sim-alice", "sim-alice-secret"
PRODUCT, BASELINE, RAW = "cryptomarket", "sse-starlette", "raw-asyncio"
SERVERS = (PRODUCT, BASELINE, RAW)  # RAW: the floor, bench/sse_raw.py
WANTED_STREAMS_PER_USER = 20_000


def sse_requests(port: int, path: str, tokens: list[str] | None) -> list[str]:
    """The raw GET of a stream, one per token (connections take them round-robin)."""
    base = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n"
    )
    if not tokens:
        return [base + "\r\n"]
    return [base + f"Authorization: Bearer {token}\r\n\r\n" for token in tokens]


@dataclass
class Bench:
    """What every run shares."""

    args: argparse.Namespace
    sim_url: str
    tmp: Path
    logs: Path
    per_user: int
    probe: UpstreamProbe
    tokens: dict[str, str] = field(default_factory=dict)  # user -> session token


@dataclass
class Server:
    kind: str
    child: Child
    port: int
    requests: list[str]
    process: psutil.Process = field(init=False)
    front: Front | None = None  # nginx in front of it (--nginx): the clients connect there

    def __post_init__(self) -> None:
        self.process = psutil.Process(self.child.pid)

    @property
    def client_port(self) -> int:
        return self.front.port if self.front is not None else self.port


def product_streams_per_user(wanted: int) -> int:
    """SSE_MAX_STREAMS_PER_USER as high as the product's settings allow, at most `wanted`."""
    from cryptomarket.core.config import Settings  # noqa: PLC0415

    with contextlib.suppress(Exception):  # the setting or its bound may change: ask for `wanted`
        for rule in Settings.model_fields["SSE_MAX_STREAMS_PER_USER"].metadata:
            if getattr(rule, "le", None) is not None:
                return min(wanted, int(rule.le))
    return wanted


def gc_wrapped(argv: list[str], gc_log: Path | None, heap: str = "") -> list[str]:
    """`argv`, run under bench/sse_gclog.py when GC pauses are to be logged, or under
    bench/tracemalloc_run.py when heap snapshots are to be written to `heap`."""
    if heap:
        return [PYTHON, "-m", "bench.tracemalloc_run", heap, "3", *argv]
    if gc_log is None:
        return argv
    program = argv[1:] if argv[0] == PYTHON else argv  # `python -m x ...` -> `-m x ...`
    return [PYTHON, "-m", "bench.sse_gclog", str(gc_log), *program]


def start_product(bench: Bench, n: int, tag: str, gc_log: Path | None) -> Server:
    port = free_port()
    env = clean_env(
        DATABASE_URL=f"sqlite:///{bench.tmp}/bench.sqlite3",
        DERIBIT_WS_URL=bench.sim_url,
        TRACKED_TICKERS=TICKER,  # an instrument is subscribed by its users alone
        **streams_env(bench.per_user, bench.args.heartbeat),
    )
    if gc_log is not None or bench.args.tracemalloc:
        env["PYTHONPATH"] = str(ROOT)
    argv = [cryptomarket_command(), "serve", "--host", HOST, "--port", str(port)]
    heap = bench.args.tracemalloc and f"{bench.args.tracemalloc}/{tag}"
    wrapped = gc_wrapped(argv, gc_log, heap)
    child = start(f"serve-{tag}", wrapped, env=env, cwd=bench.tmp, logs=bench.logs)
    wait_port(HOST, port, 60, child)
    tokens = []
    with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
        deadline = time.monotonic() + 60
        while (health := client.get("/health").json()).get("upstream") != "connected":
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve never connected upstream: {health}")
            time.sleep(0.2)
        for k in range(math.ceil(n / bench.per_user)):
            tokens.append(signed_in(bench, client, f"bench-{k}"))
    requests = sse_requests(port, "/api/v2/sse/connection?timer=0", tokens)
    return Server(PRODUCT, child, port, requests)


def signed_in(bench: Bench, client: httpx.Client, user: str) -> str:
    """A session token of `user`, subscribed to the ticker at timer=0.

    Sessions and subscriptions live in the database, which every run shares, so a user signs in
    once per benchmark. The product limits sign-in attempts per client address and per key (a
    429 says when to retry): wait and retry then.
    """
    if (token := bench.tokens.get(user)) is None:
        body = {"user_id": user, "client_id": SIM_CLIENT_ID, "client_secret": SIM_CLIENT_SECRET}
        for _attempt in range(30):
            answer = client.post("/api/v1/sessions", json=body)
            if answer.status_code != 429:
                break
            wait = re.search(r"in (\d+) s", answer.text)
            time.sleep(float(wait.group(1)) if wait else 6.0)
        answer.raise_for_status()
        token = bench.tokens[user] = answer.json()["token"]
    client.get(
        f"/api/v1/market/{user}/create_order/{bench.args.ticker}",
        params={"timer": 0},
        headers={"Authorization": f"Bearer {token}"},
    ).raise_for_status()
    return token


def start_baseline(bench: Bench, tag: str, gc_log: Path | None, kind: str = BASELINE) -> Server:
    """sse-starlette (bench/sse_baseline.py), or the raw floor (bench/sse_raw.py)."""
    port = free_port()
    argv = [
        PYTHON,
        "-m",
        "bench.sse_baseline" if kind == BASELINE else "bench.sse_raw",
        "--host",
        HOST,
        "--port",
        str(port),
        "--deribit-url",
        bench.sim_url,
        "--ticker",
        bench.args.ticker,
        "--heartbeat",
        str(bench.args.heartbeat),
    ]
    child = start(
        f"baseline-{tag}",
        gc_wrapped(argv, gc_log),
        env=clean_env(PYTHONPATH=str(ROOT)),
        cwd=ROOT,
        logs=bench.logs,
    )
    wait_port(HOST, port, 60, child)
    if kind == BASELINE:
        with httpx.Client(base_url=f"http://{HOST}:{port}", timeout=30) as client:
            client.get("/clients").raise_for_status()
    return Server(kind, child, port, sse_requests(port, "/sse", None))
