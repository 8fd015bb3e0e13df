"""`GET /health`: what works right now, checked for real, and what does not; `GET /metrics`."""

import asyncio
from typing import Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ConnectionError as RedisConnectionError

from cryptomarket.distributed.job_counts import read_job_counts
from cryptomarket.distributed.memory import RedisMemory, read_memory
from cryptomarket.runtime import Runtime, RuntimeDep
from cryptomarket.streaming.redis_bus import read_upstream_status

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT = 2.0


class Health(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "status": "ok",
                "database": "ok",
                "cache": "ok",
                "upstream": "connected",
            }
        }
    )

    status: Literal["ok", "degraded"] = Field(description="degraded when any part is down.")
    database: str = Field(description="ok, or down with the reason.")
    cache: str = Field(
        description="ok (in-process in embedded mode); with Redis: ok, ok (was down ... "
        "until ...), down since ... with the reason, or near its memory limit (used memory "
        "past 80 % of maxmemory)."
    )
    upstream: str = Field(
        description="Deribit market data: connected, connecting, reconnecting or stale; in "
        "distributed mode, as the ingest leader keeps it in Redis (via ingest), or no ingest "
        "reporting when none has for 30 s."
    )


@router.get("/health", response_model=Health, summary="Service health")
async def health(runtime: RuntimeDep) -> Health:
    """200 while the process can serve (for load balancers and `docker compose`); the body says
    which part is down: `status` is `degraded` when the database, the cache or the upstream
    market-data connection is not `ok` / `connected`."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await runtime.database.ping()
        database = "ok"
    except Exception as error:  # any failure means down; say which
        database = f"down: {type(error).__name__}"
    if runtime.writer is not None and not runtime.writer.healthy and database == "ok":
        database = f"recovering: {runtime.writer.buffered} ticks waiting to be written"
    cache = await _cache(runtime)
    upstream = await _upstream(runtime)
    healthy = database == "ok" and cache.startswith("ok") and upstream.startswith("connected")
    return Health(
        status="ok" if healthy else "degraded", database=database, cache=cache, upstream=upstream
    )


METRICS_EXAMPLE = """\
# HELP cryptomarket_upstream_up 1 while the market-data connection to Deribit is up and ticks \
arrive, else 0.
# TYPE cryptomarket_upstream_up gauge
cryptomarket_upstream_up 1.0
# HELP cryptomarket_ticks_received_total Index ticks received from Deribit.
# TYPE cryptomarket_ticks_received_total counter
cryptomarket_ticks_received_total 5214.0
# HELP cryptomarket_sse_streams Open SSE streams.
# TYPE cryptomarket_sse_streams gauge
cryptomarket_sse_streams 3.0
"""


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition format.",
            "content": {CONTENT_TYPE_LATEST: {"example": METRICS_EXAMPLE}},
        }
    },
)
async def metrics(request: Request) -> Response:
    """The process's metrics in Prometheus text format, read when scraped: the upstream
    connection (`cryptomarket_upstream_up`, `_state`, `_reconnects_total`), ticks received,
    written and dropped, database write latency (`cryptomarket_db_write_seconds`), SSE streams,
    events sent and slow clients dropped, Deribit credits spent and left, periodic job runs
    and failures (in distributed mode, the Celery workers' too), and the process's CPU and
    memory (`process_*`)."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is not None and runtime.redis is not None:
        runtime.worker_job_counts = await read_job_counts(runtime.redis)
        runtime.redis_memory = await _memory(runtime)
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


async def _cache(runtime: Runtime) -> str:
    """Redis answers, and the market events and control channel are subscribed."""
    redis, outages = runtime.redis, runtime.redis_outages
    if redis is None or outages is None:
        return "ok"  # in-process
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            try:
                await redis.ping()
            except RedisConnectionError:
                # After a Redis restart every pooled connection fails once: the second ping
                # opens a new one, so only a Redis still away is reported down.
                await redis.ping()
    except Exception as error:  # any failure means down; say which
        outages.failed(error)
        return outages.describe()
    subscribed = runtime.redis_bus is not None and runtime.redis_bus.connected
    listening = runtime.control is not None and runtime.control.listening
    if not (subscribed and listening):
        outages.failed("market events or control channel not subscribed yet")
        return outages.describe()
    outages.succeeded()
    memory = await _memory(runtime)
    if memory is not None and memory.near_limit:
        return f"near its memory limit: {memory.describe()}"
    return outages.describe()


async def _memory(runtime: Runtime) -> RedisMemory | None:
    """Redis's used memory against its limit; None when it does not answer in time."""
    if runtime.redis is None:
        return None
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            return await read_memory(runtime.redis)
    except Exception:  # unknown is not an error of /health's; the ping says why
        return None


async def _upstream(runtime: Runtime) -> str:
    """Embedded: the ingest's own state. Distributed: what the ingest leader keeps in Redis
    (a replica started after the last change knows it too); the hub's when Redis is away."""
    if runtime.ingest is not None:
        return runtime.ingest.status
    if runtime.redis is not None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                status = await read_upstream_status(runtime.redis)
        except Exception:  # Redis away: the last state the hub heard of
            return f"{runtime.hub.upstream_state} (via ingest)"
        if status is None:
            return "no ingest reporting (via ingest)"
        return f"{status.state} (via ingest)"
    return f"{runtime.hub.upstream_state} (via ingest)"
