"""`GET /health`: what works right now, checked for real, and what does not."""

import asyncio
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from cryptomarket.runtime import RuntimeDep

router = APIRouter(tags=["operations"])

CHECK_TIMEOUT = 2.0


class Health(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="degraded when any part is down.")
    database: str = Field(description="ok, or down with the reason.")
    cache: str = Field(description="ok, or down with the reason.")
    upstream: str = Field(
        description="Deribit market data: connected, connecting, reconnecting, stale, or "
        "not run here (distributed mode)."
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
    cache = "ok"  # in-process in embedded mode
    upstream = runtime.ingest.status if runtime.ingest is not None else "not run here"
    healthy = database == "ok" and cache == "ok" and upstream in ("connected", "not run here")
    return Health(
        status="ok" if healthy else "degraded", database=database, cache=cache, upstream=upstream
    )
