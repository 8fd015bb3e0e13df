"""`GET /health`: what works right now, checked for real, and what does not."""

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cryptomarket.runtime import Runtime, RuntimeDep

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT = 2.0


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded when any part is down.")
    database: str = Field(description="ok, or down with the reason.")
    cache: str = Field(
        description="ok (in-process in embedded mode); with Redis: ok, ok (was down ... "
        "until ...), or down since ... with the reason."
    )
    upstream: str = Field(
        description="Deribit market data: connected, connecting, reconnecting or stale; in "
        "distributed mode, as the ingest process last reported it (via ingest)."
    )


@router.get("/health", response_model=Health, summary="Service health")
async def health(runtime: RuntimeDep) -> Health:
    """200 while the process can serve; the body says which dependency is down."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await runtime.database.ping()
        database = "ok"
    except Exception as error:  # any failure means down; say which
        database = f"down: {type(error).__name__}"
    if runtime.writer is not None and not runtime.writer.healthy and database == "ok":
        database = f"recovering: {runtime.writer.buffered} ticks waiting to be written"
    cache = await _cache(runtime)
    if runtime.ingest is not None:
        upstream = runtime.ingest.status
    else:
        upstream = f"{runtime.hub.upstream_state} (via ingest)"
    healthy = database == "ok" and cache.startswith("ok") and upstream.startswith("connected")
    return Health(
        status="ok" if healthy else "degraded", database=database, cache=cache, upstream=upstream
    )


async def _cache(runtime: Runtime) -> str:
    """Redis answers, and the market events and control channel are subscribed."""
    redis, outages = runtime.redis, runtime.redis_outages
    if redis is None or outages is None:
        return "ok"  # in-process
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
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
    return outages.describe()
