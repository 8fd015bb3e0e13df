"""The reports' charts (matplotlib, drawn off-screen): one PNG beside each markdown report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only

import matplotlib.pyplot as plt  # after choosing the backend

Series = Mapping[str, Sequence[float]]


def over_time(
    path: Path,
    seconds: Sequence[float],
    latency_ms: Series,
    memory_mib: Series,
    title: str,
) -> None:
    """Latency (top) and memory (bottom) against the time since the run started."""
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, values in latency_ms.items():
        top.plot(seconds, values, label=name)
    top.set_ylabel("latency (ms)")
    top.set_ylim(bottom=0)
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    for name, values in memory_mib.items():
        bottom.plot(seconds, values, label=name)
    bottom.set_ylabel("memory (MiB)")
    bottom.set_xlabel("time since start (s)")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="lower right")
    bottom.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def by_size(
    path: Path,
    sizes: Sequence[int],
    latency_ms: Series,
    memory_kib: Series,
    title: str,
) -> None:
    """Latency (left) and memory per stream (right) against the number of clients."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, values in latency_ms.items():
        left.plot(sizes, values, marker="o", label=name)
    left.set_xlabel("clients")
    left.set_ylabel("tick-to-client latency (ms)")
    left.set_ylim(bottom=0)
    left.legend()
    left.grid(alpha=0.3)
    for name, values in memory_kib.items():
        right.plot(sizes, values, marker="o", label=name)
    right.set_xlabel("clients")
    right.set_ylabel("memory per stream (KiB)")
    right.set_ylim(bottom=0)
    right.legend()
    right.grid(alpha=0.3)
    for axis in (left, right):
        axis.set_xticks(list(sizes))
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
