"""Prometheus metrics, read from the process's live objects when `/metrics` is scraped.

Nothing on a hot path calls into prometheus_client: ingest, the writer, the credit budget and the
stream hub keep plain counters of their own, and `RuntimeCollector` turns them into metrics at
scrape time. The one exception is `record_job`, called once per periodic job run.
"""

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cryptomarket.runtime import Runtime

UPSTREAM_STATES = ("connecting", "connected", "reconnecting", "stale")
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class DurationHistogram:
    """Counts of durations per bucket; `observe` is a bisect and three additions."""

    def __init__(self, bounds: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is above every bound
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative `(le, count)` pairs, ending with +Inf, as Prometheus wants them."""
        pairs, total = [], 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            pairs.append((repr(float(bound)), float(total)))
        pairs.append(("+Inf", float(self.count)))
        return pairs


# Periodic jobs, by name: runs and failures. Jobs may run in worker threads, hence the lock.
_job_runs: Counter[str] = Counter()
_job_failures: Counter[str] = Counter()
_job_lock = threading.Lock()


def record_job(name: str, ok: bool) -> None:
    """Count one run of the periodic job `name`; `ok=False` also counts it as failed."""
    with _job_lock:
        _job_runs[name] += 1
        if not ok:
            _job_failures[name] += 1


def job_counts() -> tuple[dict[str, int], dict[str, int]]:
    with _job_lock:
        return dict(_job_runs), dict(_job_failures)


class RuntimeCollector(Collector):
    """Reads the Runtime's objects at scrape time; before start-up only the job counts exist."""

    def __init__(self, runtime_of: Callable[[], "Runtime | None"]) -> None:
        self._runtime_of = runtime_of

    def collect(self) -> Iterable[Metric]:
        runtime = self._runtime_of()
        yield from _jobs(runtime.worker_job_counts if runtime is not None else ({}, {}))
        if runtime is None:
            return
        yield from _upstream(runtime)
        yield from _store(runtime)
        yield from _streams(runtime)
        yield from _deribit(runtime)
        yield from _redis(runtime)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _jobs(elsewhere: tuple[dict[str, int], dict[str, int]]) -> Iterable[Metric]:
    """This process's job runs, plus those counted elsewhere (the Celery workers')."""
    runs, failures = job_counts()
    for name, count in elsewhere[0].items():
        runs[name] = runs.get(name, 0) + count
    for name, count in elsewhere[1].items():
        failures[name] = failures.get(name, 0) + count
    run_family = CounterMetricFamily(
        "cryptomarket_job_runs", "Runs of each periodic job.", labels=["job"]
    )
    failure_family = CounterMetricFamily(
        "cryptomarket_job_failures", "Runs of each periodic job that failed.", labels=["job"]
    )
    for job in sorted(runs):
        run_family.add_metric([job], runs[job])
        failure_family.add_metric([job], failures.get(job, 0))
    yield run_family
    yield failure_family


def _upstream(runtime: "Runtime") -> Iterable[Metric]:
    ingest = runtime.ingest
    if ingest is None:  # distributed mode: the ingest process holds the upstream connection
        return
    yield _gauge(
        "cryptomarket_upstream_up",
        "1 while the market-data connection to Deribit is up and ticks arrive, else 0.",
        1.0 if ingest.status == "connected" else 0.0,
    )
    states = GaugeMetricFamily(
        "cryptomarket_upstream_state",
        "The market-data connection's state: 1 for the current one.",
        labels=["state"],
    )
    for state in UPSTREAM_STATES:
        states.add_metric([state], 1.0 if ingest.status == state else 0.0)
    yield states
    yield _counter(
        "cryptomarket_upstream_reconnects",
        "Reconnections of the market-data connection to Deribit.",
        ingest.connection.reconnects,
    )
    yield _counter(
        "cryptomarket_ticks_received", "Index ticks received from Deribit.", ingest.ticks_in
    )
    yield _gauge(
        "cryptomarket_upstream_tickers", "Index channels subscribed upstream.", len(ingest.tickers)
    )


def _store(runtime: "Runtime") -> Iterable[Metric]:
    writer = runtime.writer
    if writer is None:
        return
    yield _counter("cryptomarket_ticks_written", "Ticks written to the database.", writer.written)
    yield _counter(
        "cryptomarket_ticks_dropped",
        "Ticks not kept because the write buffer was full (recorded as gaps).",
        writer.dropped,
    )
    yield _gauge("cryptomarket_write_buffer_ticks", "Ticks waiting to be written.", writer.buffered)
    yield _counter(
        "cryptomarket_db_write_failures", "Batch writes the database refused.", writer.failures
    )
    durations = writer.write_seconds
    histogram = HistogramMetricFamily(
        "cryptomarket_db_write_seconds", "Time to write one batch of ticks (one transaction)."
    )
    histogram.add_metric([], durations.buckets(), durations.sum)
    yield histogram


def _streams(runtime: "Runtime") -> Iterable[Metric]:
    hub = runtime.hub
    yield _gauge("cryptomarket_sse_streams", "Open SSE streams.", hub.open_streams)
    yield _counter(
        "cryptomarket_sse_events_sent",
        "Events written to SSE streams.",
        hub.events_sent,
    )
    yield _counter(
        "cryptomarket_sse_streams_dropped",
        "SSE streams dropped because their client could not keep up.",
        hub.streams_dropped,
    )


def _deribit(runtime: "Runtime") -> Iterable[Metric]:
    budget = runtime.budget
    yield _counter(
        "cryptomarket_deribit_credits_spent",
        "Deribit rate-limit credits spent by this process's requests.",
        budget.spent,
    )
    available = GaugeMetricFamily(
        "cryptomarket_deribit_credits_available",
        "Credits left in the client-side budget, per Deribit bucket.",
        labels=["bucket"],
    )
    for bucket in ("default", "subscribe"):
        available.add_metric([bucket], budget.available(bucket))
    yield available
    yield _gauge(
        "cryptomarket_deribit_pool_connections",
        "Open request/response connections to Deribit.",
        runtime.pool.open_connections,
    )


def _redis(runtime: "Runtime") -> Iterable[Metric]:
    memory = runtime.redis_memory
    if memory is None:  # embedded mode, or Redis did not answer the scrape's read
        return
    yield _gauge(
        "cryptomarket_redis_memory_used_bytes",
        "Memory Redis counts against its maxmemory.",
        memory.used,
    )
    yield _gauge(
        "cryptomarket_redis_memory_limit_bytes",
        "Redis's maxmemory (0: no limit).",
        memory.limit,
    )
    yield _gauge(
        "cryptomarket_redis_memory_near_limit",
        "1 while Redis's used memory is past 80 % of its maxmemory (/health says degraded).",
        1.0 if memory.near_limit else 0.0,
    )


def make_registry(runtime_of: Callable[[], "Runtime | None"]) -> CollectorRegistry:
    """A registry of one application: its runtime's metrics and the process's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(runtime_of))
    ProcessCollector(registry=registry)
    return registry
