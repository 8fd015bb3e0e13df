"""A real uvicorn server running the application on a free loopback port, inside the test's loop."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from __tests__.servers import free_port
from cryptomarket.core.config import Settings
from cryptomarket.core.server import make_server

# Tests of other behaviour poll the price routes and reopen streams far faster than a client
# should; the limits on those have tests of their own, which set them.
LIMITS_OUT_OF_THE_WAY = {
    "SSE_OPEN_BURST": 100_000,
    "HISTORY_BURST": 1_000_000,
    "HISTORY_PER_MINUTE": 100_000_000,
}


def app_settings(**values: Any) -> Settings:
    """Settings from the given values only: no .env, no environment of the developer."""
    for name, value in LIMITS_OUT_OF_THE_WAY.items():
        values.setdefault(name, value)
    values.setdefault("PROJECT_MODE", "testing")
    values.setdefault("DERIBIT_HEARTBEAT_INTERVAL", 1)
    values.setdefault("DERIBIT_REQUEST_TIMEOUT", 5)
    values.setdefault("LOG_LEVEL", "INFO")
    return Settings(_env_file=None, **values)


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn until the block ends; yields its base URL."""
    port = free_port()
    server = make_server(app, "127.0.0.1", port, lifespan="on")
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.01)  # uvicorn offers no start event
        yield f"http://127.0.0.1:{port}"
    finally:
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            runtime.begin_shutdown()  # as `cryptomarket serve` does on SIGTERM
        server.should_exit = True
        await task
