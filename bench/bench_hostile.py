"""Hostile neighbour: well-behaved streams beside one attacker, measured against a quiet run.

`cryptomarket simulate` ticks every index 5 times a second; `cryptomarket serve` (embedded mode,
SQLite, a day of btc_usd history loaded beforehand) streams btc_usd to `--streams` well-behaved
`timer=0` streams, 10 per user, each user signed in with a key of its own from an address of its
own (127.1.x.y: Linux answers the whole 127/8 on loopback). Beside them, all through the run, a
few good clients do what clients do: a stream reconnects every 1.5 s, a user reads an hour of
history every second, the victim signs in every 8 s (within the limits a user is told of).

The quiet window measures that; then one attacker, from 127.0.0.2, starts four attacks at once and
the same window is measured again:
  (a) history: 20 connections asking for 10,000-row pages and CSV exports of the day, in a loop;
  (b) aliases: sign-ins under new user ids with one key, each opening as many streams as it may;
  (c) replays: a user following every index with timer=0 reopens its stream in a loop with
      `Last-Event-ID: btc_usd:0`;
  (d) lockout: sign-ins with the victim's Client Id and a wrong secret, in a loop.

For each window: delivery (the btc_usd ticks a direct subscriber of the simulator saw, against
what each steady stream got) and the tick-to-client latency; for the attack, every answer the
attacker got and every answer the good clients got. Targets (issue #15): delivery >= 99.9 %, p99
within 1.5x of the quiet run, the attacker gets 429s, the good clients never a 503.

Run: `make bench` (1,000 streams) or `python -m bench.bench_hostile --streams 100 --seconds 10`.
Writes bench/results/hostile.md.
"""

# ruff: noqa: S101  (asserts check the run's set-up)

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import command_line, machine, markdown_table, percentile
from bench.soak import PRICE, reference_ticks
from bench.soak import TRACKED as TICKER
from bench.sse_common import Child, cpu_seconds, free_port, raise_nofile, spawn, wait_port
from cryptomarket.deribit.simulator.indexes import INDEX_NAMES

HOST = "127.0.0.1"
ATTACKER = "127.0.0.2"
PER_USER = 10  # streams per well-behaved user (the default limit per account)
RESULTS = Path(__file__).parent / "results"
Statuses = collections.Counter[str]


def good_address(n: int) -> str:
    return f"127.1.{n // 250}.{n % 250 + 1}"


def client(port: int, address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=f"http://{HOST}:{port}", transport=transport, timeout=30)


# -- streams --------------------------------------------------------------------------------------


@dataclass
class Life:
    """One stream connection: its answer's status, and each btc_usd tick with its latency."""

    status: int = 0
    opened: float = 0.0
    closed: float = 0.0
    ticks: dict[int, float] = field(default_factory=dict)  # timestamp -> latency ms
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # status known

    async def status_within(self, seconds: float) -> int:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.answered.wait(), seconds)
        return self.status


async def stream(
    port: int, address: str, token: str, life: Life, *, last_event_id: str | None = None
) -> None:
    """Read one stream until the server or the caller ends it; fills `life`."""
    extra = f"Last-Event-ID: {last_event_id}\r\n" if last_event_id else ""
    try:
        reader, writer = await asyncio.open_connection(HOST, port, local_addr=(address, 0))
    except OSError:
        life.status = -1
        life.answered.set()
        return
    life.opened = time.time()
    try:
        writer.write(
            f"GET /api/v2/sse/connection HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: Bearer {token}\r\n{extra}\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        life.status = int(head.split(b" ", 2)[1])
        life.answered.set()
        if life.status != 200:
            return
        tail = b""
        while chunk := await reader.read(65536):
            now_ms = time.time() * 1000
            text = tail + chunk
            cut = text.rfind(b"\n")
            tail = text[cut + 1 :]
            for line in text[: cut + 1].split(b"\n"):
                if b'"ticker":"btc_usd"' in line and (match := PRICE.search(line)):
                    life.ticks.setdefault(int(match.group(1)), now_ms - int(match.group(1)))
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        pass
    finally:
        life.closed = time.time()
        life.answered.set()
        writer.close()


class Steady:
    """A well-behaved stream, open through the whole run."""

    def __init__(self, port: int, address: str, token: str) -> None:
        self.life = Life()
        self.task = asyncio.create_task(stream(port, address, token, self.life))


# -- the good users' and the attacker's traffic ---------------------------------------------------


async def sign_in(http: httpx.AsyncClient, user: str, key: str, secret: str) -> httpx.Response:
    body = {"user_id": user, "client_id": key, "client_secret": secret}
    return await http.post("/api/v1/sessions", json=body)


REPLAY_LOOPS = 4  # attack (c)'s reopening loops, side by side


async def until(stop: asyncio.Event, every: float, action: Callable[[], Awaitable[None]]) -> None:
    """`action` every `every` seconds (0: back to back) until `stop` is set."""
    while not stop.is_set():
        await action()
        if every:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


def history_query(day: datetime, *, csv: bool) -> str:
    start = day.strftime("%Y-%m-%dT%H:%M:%SZ")
    form = "&format=csv" if csv else "&limit=10000"
    return f"/api/v1/prices/by-date?ticker={TICKER}&start_date={start}{form}"


async def good_clients(
    port: int, stop: asyncio.Event, day: datetime, seen: Statuses, *, token: str, address: str
) -> None:
    """A reconnecting stream, history reads and the victim's sign-ins, as in any hour."""

    async def reconnect() -> None:
        life = Life()
        task = asyncio.create_task(stream(port, address, token, life))
        seen[f"stream {await life.status_within(10)}"] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 0.3)  # a few events, then away
        task.cancel()

    async with client(port, address) as reader, client(port, "127.0.3.1") as v:

        async def read_history() -> None:
            hour = f"&end_date={(day + timedelta(hours=1)).strftime('%Y-%m-%dT%H:%M:%SZ')}"
            answer = await reader.get(history_query(day, csv=False) + hour)
            seen[f"history {answer.status_code}"] += 1

        async def victim_signs_in() -> None:
            answer = await sign_in(v, "victim", "victim", "victim-secret")
            seen[f"victim sign-in {answer.status_code}"] += 1

        await asyncio.gather(
            until(stop, 1.5, reconnect),
            until(stop, 1.0, read_history),
            until(stop, 8.0, victim_signs_in),
        )


async def attacker(
    port: int, stop: asyncio.Event, day: datetime, seen: Statuses, kinds: str = "abcd"
) -> None:
    """The attacks named in `kinds` at once, until `stop`."""
    async with client(port, ATTACKER) as http:
        signed = await sign_in(http, "evil-0", "evil", "evil-secret")
        token = signed.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        flip = iter(range(10**9))
        aliases = iter(range(1, 10**9))
        held: list[asyncio.Task[None]] = []

        async def flood_history() -> None:
            answer = await http.get(history_query(day, csv=next(flip) % 2 == 0))
            seen[f"(a) history {answer.status_code}"] += 1

        async def claim_alias() -> None:
            user = f"evil-{next(aliases)}"
            answer = await sign_in(http, user, "evil", "evil-secret")
            seen[f"(b) sign-in {answer.status_code}"] += 1
            if answer.status_code != 201:
                return
            for _ in range(PER_USER * 2):
                life = Life()
                held.append(
                    asyncio.create_task(stream(port, ATTACKER, answer.json()["token"], life))
                )
                seen[f"(b) stream {await life.status_within(10)}"] += 1

        async def follow_everything() -> None:
            """47 tickers, every tick: the issue's replay amplification."""
            await asyncio.gather(
                *(
                    http.get(f"/api/v1/market/evil-0/create_order/{name}?timer=0", headers=auth)
                    for name in [TICKER, *(n for n in INDEX_NAMES if n != TICKER)][:47]
                )
            )

        async def replay() -> None:
            life = Life()
            task = asyncio.create_task(
                stream(port, ATTACKER, token, life, last_event_id="btc_usd:0")
            )
            seen[f"(c) replay {await life.status_within(10)}"] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 0.1)  # read some of the replay
            task.cancel()

        async def replays() -> None:
            # Subscribing is paced by Deribit's credits (3,000 a subscribe call): replay meanwhile.
            # Several loops at once, as an attacker would: one loop's pace depends on how fast
            # the server answers, and a slow machine would keep it under the opens' burst.
            loops = (until(stop, 0, replay) for _ in range(REPLAY_LOOPS))
            await asyncio.gather(follow_everything(), *loops)

        async def lock_out() -> None:
            answer = await sign_in(http, "victim", "victim", "not-the-secret")
            seen[f"(d) sign-in {answer.status_code}"] += 1

        attacks = {
            "a": [until(stop, 0, flood_history) for _ in range(20)],
            "b": [until(stop, 0, claim_alias)],
            "c": [replays()],
            "d": [until(stop, 0, lock_out)],
        }
        try:
            await asyncio.gather(*(a for kind in kinds for a in attacks[kind]))
        finally:
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)


class AttackerProcess:
    """The attacker in a process of its own, so its loops cost the measured clients nothing
    but what they cost the server (and the machine's cores, as a real neighbour's would)."""

    def __init__(self, port: int, day: datetime, kinds: str) -> None:
        self.argv = ["-m", "bench.bench_hostile", "--attack", f"{port},{day.isoformat()},{kinds}"]
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )

    async def stop(self, seen: Statuses) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()  # its signal to stop
        out, _ = await self.process.communicate()
        seen.update(json.loads(out.decode().strip().splitlines()[-1]))


async def attack_until_stdin_closes(spec: str) -> None:
    port, day, kinds = spec.split(",")
    stop, seen = asyncio.Event(), Statuses()
    running = asyncio.create_task(
        attacker(int(port), stop, datetime.fromisoformat(day), seen, kinds)
    )
    await asyncio.to_thread(sys.stdin.read)
    stop.set()
    await running
    print(json.dumps(seen), flush=True)


# -- set-up ---------------------------------------------------------------------------------------


def accounts(users: int) -> list[dict[str, Any]]:
    names = [f"good-{n}" for n in range(users)] + ["evil", "victim"]
    return [
        {
            "client_id": name,
            "client_secret": f"{name}-secret",
            "id": 7000 + n,
            "username": name.replace("-", ""),
            "email": f"{name}@example.com",
            "type": "main",
        }
        for n, name in enumerate(names)
    ]


def load_history(path: Path, day: datetime) -> int:
    """A day of btc_usd, one tick a second, straight into the migrated file."""
    start = int(day.timestamp() * 1000)
    rows = [
        (TICKER, start + s * 1000 + 418, 90_000 + (s % 600), "2026-01-01 00:00:00.000000")
        for s in range(86_400)
    ]
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.executemany(
            "INSERT INTO crypto_price_tickers (ticker, timestamp, price, received_at) "
            "VALUES (?, ?, ?, ?)",
            rows,
        )
    return len(rows)


@dataclass
class Window:
    name: str
    w0: int = 0
    w1: int = 0
    seen: Statuses = field(default_factory=collections.Counter)
    delivered: int = 0
    expected: int = 0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0  # cores the server process used in the window
    stalls: list[int] = field(default_factory=list)  # its event loop's stalls over 100 ms


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def stalls_since(path: Path, offset: int) -> list[int]:
    """The stalls the server's loop monitor logged past `offset` (core/loop_monitor.py)."""
    with path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [int(ms) for ms in re.findall(r"event loop stalled for (\d+) ms", text)]


def measure(window: Window, steady: list[Steady], reference: list[int]) -> None:
    made = [t for t in reference if window.w0 <= t < window.w1]
    for one in steady:
        got = one.life.ticks
        window.expected += len(made)
        window.delivered += sum(1 for t in made if t in got)
        window.latencies += [got[t] for t in made if t in got]


async def run(args: argparse.Namespace, tmp: Path) -> tuple[Window, Window]:  # noqa: PLR0915
    executable = shutil.which("cryptomarket", path=str(Path(sys.executable).parent))
    users = max(1, args.streams // PER_USER)
    (tmp / "accounts.json").write_text(json.dumps(accounts(users + 1)))
    sim_port, port = free_port(), free_port()
    children: list[Child] = []
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin"),
        "DATABASE_URL": f"sqlite:///{tmp / 'hostile.sqlite3'}",
        "DERIBIT_WS_URL": f"ws://{HOST}:{sim_port}/ws/api/v2",
        "PROJECT_MODE": "testing",
        "DERIBIT_HEARTBEAT_INTERVAL": "10",
        "TRACKED_TICKERS": TICKER,
        "SSE_MAX_STREAMS_PER_USER": str(PER_USER),
        "LOG_LEVEL": "WARNING",
    }
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=2)
    try:
        migrate = await asyncio.create_subprocess_exec(
            str(executable), "migrate", env=env, cwd=tmp, stdout=asyncio.subprocess.DEVNULL
        )
        assert await migrate.wait() == 0, "cryptomarket migrate failed"
        load_history(tmp / "hostile.sqlite3", day)
        sim_argv = [str(executable), "simulate", "--port", str(sim_port), "--tick-interval", "0.2"]
        sim_argv += ["--min-heartbeat", "1", "--accounts", str(tmp / "accounts.json")]
        children.append(spawn("simulate", sim_argv, cwd=tmp, log_path=tmp / "simulate.log"))
        wait_port(HOST, sim_port, 30, children[0])
        serve_argv = [str(executable), "serve", "--host", HOST, "--port", str(port)]
        server = spawn("serve", serve_argv, env=env, cwd=tmp, log_path=tmp / "serve.log")
        children.append(server)
        wait_port(HOST, port, 60, server)
        process = psutil.Process(server.pid)

        reference: list[int] = []
        ready = asyncio.Event()
        reference_task = asyncio.create_task(
            reference_ticks(env["DERIBIT_WS_URL"], TICKER, reference, ready)
        )
        await ready.wait()

        signed: list[tuple[str, str]] = []
        for n in range(users + 1):  # the last one's streams are the reconnecting ones
            async with client(port, good_address(n)) as http:
                answer = await sign_in(http, f"good{n}", f"good-{n}", f"good-{n}-secret")
                answer.raise_for_status()
                token = answer.json()["token"]
                subscribed = await http.get(
                    f"/api/v1/market/good{n}/create_order/{TICKER}?timer=0",
                    headers={"Authorization": f"Bearer {token}"},
                )
                subscribed.raise_for_status()
                signed.append((f"good{n}", token))
        steady = [
            Steady(port, good_address(n), signed[n][1])
            for n in range(users)
            for _ in range(PER_USER)
        ]
        started = time.monotonic()
        while any(not s.life.ticks for s in steady):  # no event to await
            assert time.monotonic() - started < 60, "streams did not all get a price within 60 s"
            await asyncio.sleep(0.1)

        quiet, attack = Window("quiet"), Window("attacked")
        for window in (quiet, attack):
            stop = asyncio.Event()
            churner = {"token": signed[users][1], "address": good_address(users)}
            running = asyncio.gather(good_clients(port, stop, day, window.seen, **churner))
            hostile = AttackerProcess(port, day, args.attacks) if window is attack else None
            if hostile is not None:
                await hostile.start()
            await asyncio.sleep(args.warmup)
            window.w0 = int(time.time() * 1000)
            if args.py_spy:  # where the server's time goes in the window
                spy = [args.py_spy, "record", "--pid", str(server.pid), "--nonblocking"]
                spy += ["--duration", str(int(args.seconds)), "--format", "raw"]
                spy += ["--output", str(tmp.parent / f"hostile-{window.name}.txt")]
                children.append(spawn(f"py-spy-{window.name}", spy, log_path=tmp / "spy.log"))
            cpu_before, log_before = cpu_seconds(process), log_size(tmp / "serve.log")
            await asyncio.sleep(args.seconds)
            window.w1 = int(time.time() * 1000)
            window.server_cpu = (cpu_seconds(process) - cpu_before) / args.seconds
            window.stalls = stalls_since(tmp / "serve.log", log_before)
            await asyncio.sleep(1.0)  # the window's last ticks on their way
            stop.set()
            await running
            if hostile is not None:
                await hostile.stop(window.seen)
            print(f"{window.name}: {dict(sorted(window.seen.items()))}", flush=True)
        for s in steady:
            s.task.cancel()
        await asyncio.gather(*(s.task for s in steady), return_exceptions=True)
        reference_task.cancel()
        await asyncio.gather(reference_task, return_exceptions=True)
        ticks = sorted(set(reference))
        for window in (quiet, attack):
            measure(window, steady, ticks)
        return quiet, attack
    finally:
        for child in reversed(children):
            child.stop()


# -- the report -----------------------------------------------------------------------------------


def verdicts(quiet: Window, attack: Window) -> list[tuple[str, bool]]:
    ratio = percentile(attack.latencies, 99) / max(percentile(quiet.latencies, 99), 1e-9)
    attacker_429 = sum(
        n for what, n in attack.seen.items() if what.startswith("(") and "429" in what
    )
    good_503 = sum(
        n for what, n in attack.seen.items() if not what.startswith("(") and "503" in what
    )
    return [
        (f"delivery under attack {100 * attack.delivered / attack.expected:.3f} % >= 99.9 %",
         attack.delivered >= 0.999 * attack.expected),
        (f"p99 under attack {ratio:.2f}x the quiet run's <= 1.5x", ratio <= 1.5),
        (f"the attacker got {attacker_429} 429s", attacker_429 > 0),
        (f"the good clients got {good_503} 503s", good_503 == 0),
    ]  # fmt: skip


def report(args: argparse.Namespace, quiet: Window, attack: Window, wall: float) -> str:
    rows = []
    for window in (quiet, attack):
        lat = window.latencies
        rows.append(
            [
                window.name,
                f"{args.streams:,}",
                f"{window.delivered:,} / {window.expected:,}",
                f"{100 * window.delivered / max(1, window.expected):.3f} %",
                f"{percentile(lat, 50):.1f}",
                f"{percentile(lat, 99):.1f}",
                f"{percentile(lat, 99) / max(percentile(quiet.latencies, 99), 1e-9):.2f}x",
                f"{window.server_cpu:.2f}",
                f"{len(window.stalls)} (longest {max(window.stalls, default=0)} ms)",
            ]
        )
    answers = [[what, f"{n:,}"] for what, n in sorted(attack.seen.items())]
    quiet_answers = [[what, f"{n:,}"] for what, n in sorted(quiet.seen.items())]
    checks = [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in verdicts(quiet, attack)]
    return "\n".join(
        [
            "# Hostile neighbour: well-behaved streams beside one attacker",
            "",
            f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC",
            f"- command (from the repository root): `{command_line()}`",
            f"- wall time of the whole run: {wall:.0f} s",
            "",
            "## Machine",
            "",
            markdown_table(["what", "value"], machine()),
            "",
            f"{args.streams:,} `timer=0` btc_usd streams ({PER_USER} per user, a key and an "
            f"address each), 5 ticks a second; each window {args.seconds:g} s after "
            f"{args.warmup:g} s of warm-up. Latency: receipt - Deribit's timestamp, per tick "
            "and stream.",
            "",
            "## Streams: quiet against attacked (the baseline is the quiet run, same process)",
            "",
            markdown_table(
                [
                    "run",
                    "streams",
                    "ticks delivered",
                    "delivery",
                    "p50 ms",
                    "p99 ms",
                    "p99 / quiet",
                    "server CPU (cores)",
                    "loop stalls > 100 ms",
                ],
                rows,
            ),
            "",
            "## Answers during the attack: the attacker's (a)-(d), and the good clients'",
            "",
            markdown_table(["who, what, status", "answers"], answers),
            "",
            "Good clients in the quiet run, for comparison:",
            "",
            markdown_table(["what, status", "answers"], quiet_answers),
            "",
            "## Verdicts",
            "",
            *checks,
            "",
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0, help="each measured window")
    parser.add_argument("--warmup", type=float, default=5.0, help="before each window")
    parser.add_argument("--output", type=Path, default=RESULTS / "hostile.md")
    parser.add_argument("--attacks", default="abcd", help="which of the attacks (a)-(d) to run")
    parser.add_argument("--py-spy", help="py-spy's path: profile the server in each window")
    parser.add_argument("--attack", help=argparse.SUPPRESS)  # the attacker's own process
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> tuple[Window, Window] | None:
    args = parse_args(argv)
    if args.attack:
        asyncio.run(attack_until_stdin_closes(args.attack))
        return None
    raise_nofile()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cm-hostile-") as tmp:
        quiet, attack = asyncio.run(run(args, Path(tmp)))
    text = report(args, quiet, attack, time.monotonic() - started)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(text)
    return quiet, attack


if __name__ == "__main__":
    main()
