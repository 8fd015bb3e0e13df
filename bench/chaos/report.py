"""The run's report: invariants, the fault timeline, Redis memory over time, and a chart."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # after choosing the backend

from bench.chaos.run import Outcome
from bench.common import Report

MiB = 2**20
SUMMARY_LINES = 25  # detail lines per broken invariant on the console; the report has all


def summary(outcome: Outcome) -> str:
    """What a failing test prints: the seed to replay with and every broken invariant's ids."""
    plan = outcome.plan
    lines = [
        f"chaos {plan.mode}: seed {plan.seed}, window {outcome.window[0]}..{outcome.window[1]} ms,"
        f" {len(outcome.faults)} faults; replay: make chaos SEED={plan.seed} MODE={plan.mode}"
    ]
    for check in outcome.checks:
        mark = "ok  " if check.holds else "FAIL"
        counts = ", ".join(f"{k}={v}" for k, v in check.counts.items())
        lines.append(f"  {mark} {check.name}: {counts}")
        if not check.holds:
            lines.extend(f"       {d}" for d in check.details[:SUMMARY_LINES])
            if len(check.details) > SUMMARY_LINES:
                lines.append(f"       ... {len(check.details) - SUMMARY_LINES} more in the report")
    lines.extend(f"  note: {n}" for n in outcome.notes)
    return "\n".join(lines)


def chart(outcome: Outcome, path: Path) -> None:
    """Redis memory (top) and upstream market-data connections (bottom), faults shaded."""
    t0 = outcome.window[0]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    seconds = [(s.at_ms - t0) / 1000 for s in outcome.samples]
    if outcome.maxmemory:
        used = [s.redis_used / MiB if s.redis_used is not None else None for s in outcome.samples]
        top.plot(seconds, used, label="Redis used_memory")
        top.axhline(outcome.maxmemory / MiB, color="red", linestyle="--", label="maxmemory")
        top.set_ylabel("MiB")
        top.legend(loc="upper left")
    rss = [[u[0] / MiB if u else None for u in s.serves] for s in outcome.samples]
    for i in range(len(outcome.baseline)):
        top.plot(seconds, [r[i] if i < len(r) else None for r in rss], label=f"serve {i} RSS")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.step(seconds, [len(s.upstream) for s in outcome.samples], where="post")
    bottom.set_ylabel("upstream connections")
    bottom.set_xlabel("time since the window started (s)")
    bottom.set_ylim(-0.2, 2.5)
    bottom.grid(alpha=0.3)
    for fault in outcome.faults:
        for axis in (top, bottom):
            axis.axvspan((fault.started_ms - t0) / 1000, (fault.ended_ms - t0) / 1000, alpha=0.15)
    figure.suptitle(f"chaos, {outcome.plan.mode} mode, seed {outcome.plan.seed}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def new_report() -> Report:
    """Made when the run starts, so the report's wall time is the whole run's."""
    return Report("chaos", "Chaos run: the ledger against the simulator's ground truth")


def write(report: Report, outcomes: list[Outcome], minutes: float, path: Path) -> None:
    report.text(
        f"{minutes:g} minute(s) of seeded faults per mode. Ground truth: `sim/produced`, every "
        "tick the simulator produced. A tick stored with its price, or inside a gap recorded at "
        "the end, is accounted for; anything else is silently lost. Of an instrument, the first "
        "update of each INSTRUMENT_STORE_INTERVAL_MS is due in the database (`due` counts "
        "those), and every update on every stream."
    )
    for outcome in outcomes:
        plan = outcome.plan
        report.heading(f"{plan.mode} mode, seed {plan.seed}")
        report.text(
            f"{len(plan.ledger_tickers)} ledger tickers ({len(plan.tracked)} tracked: "
            f"{', '.join(plan.tracked)}), tick interval {plan.tick_interval}s, "
            f"{len(plan.users)} timer=0 users, storms on {', '.join(plan.storm_tickers)}."
        )
        report.heading("Invariants", 3)
        report.table(
            ("invariant", "holds", "counts"),
            [
                (
                    c.name,
                    "yes" if c.holds else "**NO**",
                    ", ".join(f"{k}={v}" for k, v in c.counts.items()),
                )
                for c in outcome.checks
            ],
        )
        broken = [c for c in outcome.checks if not c.holds]
        if broken:
            report.heading("Violations (tick ids to replay)", 3)
            report.code("\n".join(f"{c.name}:\n  " + "\n  ".join(c.details) for c in broken))
        report.heading("Fault timeline", 3)
        t0 = outcome.window[0]
        report.table(
            ("t (s)", "fault", "lasted (s)", "prices back after (s)", "note"),
            [
                (
                    f"{(f.started_ms - t0) / 1000:.1f}",
                    f.describe(),
                    f"{(f.ended_ms - f.started_ms) / 1000:.1f}",
                    f"{(f.resumed_ms - f.started_ms) / 1000:.1f}" if f.resumed_ms else "never",
                    f.note or "; ".join(f.outcomes[:2]),
                )
                for f in outcome.faults
            ],
        )
        if outcome.maxmemory:
            report.heading("Redis memory over time", 3)
            step = max(1, len(outcome.samples) // 20)
            report.table(
                ("t (s)", "used_memory (MiB)", "limit (MiB)"),
                [
                    (
                        f"{(s.at_ms - t0) / 1000:.0f}",
                        f"{s.redis_used / MiB:.1f}" if s.redis_used is not None else "down",
                        f"{outcome.maxmemory / MiB:.0f}",
                    )
                    for s in outcome.samples[::step]
                ],
            )
        picture = path.with_name(f"chaos-{plan.mode}.png")
        chart(outcome, picture)
        report.text(f"![{plan.mode}]({picture.name})")
        if outcome.notes:
            report.text("Notes: " + "; ".join(outcome.notes))
    report.write(path)
