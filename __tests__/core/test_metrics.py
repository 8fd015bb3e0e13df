"""`/metrics`: Prometheus text whose values follow what a live service does."""

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from __tests__.helpers import eventually_async
from __tests__.service import Service
from __tests__.simulated import sim_control
from __tests__.sse import open_stream
from cryptomarket.core.metrics import DurationHistogram, record_job

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(service: Service) -> Samples:
    response = await service.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


async def test_every_promised_metric_is_exposed(service: Service) -> None:
    samples = await scrape(service)
    names = {name for name, _ in samples}
    promised = {
        "cryptomarket_upstream_up",
        "cryptomarket_upstream_state",
        "cryptomarket_upstream_reconnects_total",
        "cryptomarket_ticks_received_total",
        "cryptomarket_ticks_written_total",
        "cryptomarket_ticks_dropped_total",
        "cryptomarket_write_buffer_ticks",
        "cryptomarket_db_write_seconds_bucket",
        "cryptomarket_db_write_seconds_count",
        "cryptomarket_db_write_failures_total",
        "cryptomarket_sse_streams",
        "cryptomarket_sse_events_sent_total",
        "cryptomarket_sse_streams_dropped_total",
        "cryptomarket_deribit_credits_spent_total",
        "cryptomarket_deribit_credits_available",
        "cryptomarket_deribit_pool_connections",
        "process_resident_memory_bytes",
    }
    assert promised <= names, promised - names


async def test_ticks_in_and_written_rise_while_the_simulator_ticks(service: Service) -> None:
    first = await scrape(service)

    async def moved() -> bool:
        now = await scrape(service)
        return all(
            value(now, name) > value(first, name)
            for name in (
                "cryptomarket_ticks_received_total",
                "cryptomarket_ticks_written_total",
                "cryptomarket_db_write_seconds_count",
            )
        )

    await eventually_async(moved, what="ticks received, written and timed")
    samples = await scrape(service)
    assert value(samples, "cryptomarket_db_write_seconds_sum") > 0
    assert value(samples, "cryptomarket_db_write_seconds_bucket", le="+Inf") == value(
        samples, "cryptomarket_db_write_seconds_count"
    )


async def test_upstream_state_and_reconnects_follow_the_connection(service: Service) -> None:
    async def up() -> bool:
        samples = await scrape(service)
        return value(samples, "cryptomarket_upstream_up") == 1

    await eventually_async(up, what="upstream up")
    samples = await scrape(service)
    assert value(samples, "cryptomarket_upstream_state", state="connected") == 1
    assert value(samples, "cryptomarket_upstream_state", state="reconnecting") == 0
    before = value(samples, "cryptomarket_upstream_reconnects_total")

    await sim_control(service.simulator, ("sim/drop_connections", {}))

    async def reconnected() -> bool:
        now = await scrape(service)
        return (
            value(now, "cryptomarket_upstream_reconnects_total") >= before + 1
            and value(now, "cryptomarket_upstream_up") == 1
        )

    await eventually_async(reconnected, what="one reconnect, then up again")


async def test_open_streams_are_counted_and_forgotten(service: Service) -> None:
    token = await service.sign_in("alice")
    client = service.client_for(token)
    try:
        assert value(await scrape(service), "cryptomarket_sse_streams") == 0
        async with open_stream(client) as stream:
            await stream.until("connected")
            assert value(await scrape(service), "cryptomarket_sse_streams") == 1

        async def closed() -> bool:
            return value(await scrape(service), "cryptomarket_sse_streams") == 0

        await eventually_async(closed, what="the stream forgotten")
    finally:
        await client.aclose()


async def test_events_sent_rise_with_a_stream(service: Service) -> None:
    token = await service.sign_in("alice")
    client = service.client_for(token)
    try:
        create = await client.get("/api/v1/market/alice/create_order/btc_usd?timer=0")
        assert create.status_code == 201
        before = value(await scrape(service), "cryptomarket_sse_events_sent_total")
        async with open_stream(client) as stream:
            await stream.until("connected")
            await stream.until("price")
            await stream.until("price")  # pushed by the hub as it arrived

            async def counted() -> bool:
                samples = await scrape(service)
                return value(samples, "cryptomarket_sse_events_sent_total") > before

            await eventually_async(counted, what="events sent counted")
    finally:
        await client.aclose()


async def test_deribit_credits_spent_rise_with_a_request(service: Service) -> None:
    before = await scrape(service)
    assert (await service.client.get("/api/v1/tickers")).status_code == 200  # asks Deribit
    after = await scrape(service)
    spent = "cryptomarket_deribit_credits_spent_total"
    assert value(after, spent) >= value(before, spent) + 500  # Deribit's cost of a request
    assert value(after, "cryptomarket_deribit_pool_connections") >= 1
    assert 0 < value(after, "cryptomarket_deribit_credits_available", bucket="default") <= 50_000


async def test_job_runs_and_failures(service: Service) -> None:
    job = f"test_job_{uuid.uuid4().hex[:8]}"
    record_job(job, ok=True)
    record_job(job, ok=False)
    record_job(job, ok=True)
    samples = await scrape(service)
    assert value(samples, "cryptomarket_job_runs_total", job=job) == 3
    assert value(samples, "cryptomarket_job_failures_total", job=job) == 1


def test_duration_histogram_buckets_are_cumulative() -> None:
    histogram = DurationHistogram((0.01, 0.1, 1.0))
    for seconds in (0.005, 0.01, 0.05, 0.5, 3.0):
        histogram.observe(seconds)
    assert histogram.buckets() == [
        ("0.01", 2.0),
        ("0.1", 3.0),
        ("1.0", 4.0),
        ("+Inf", 5.0),
    ]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(3.565)
