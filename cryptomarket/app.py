"""The FastAPI application."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cryptomarket import __version__, health
from cryptomarket.core.config import Settings
from cryptomarket.core.errors import install_error_handlers
from cryptomarket.prices import endpoints as prices
from cryptomarket.runtime import Runtime
from cryptomarket.streaming import endpoints as streaming
from cryptomarket.subscriptions import endpoints as subscriptions
from cryptomarket.users import endpoints as users
from cryptomarket.web import endpoints as web

DESCRIPTION = """
A gateway between your applications and Deribit: index prices live over Server-Sent Events,
their stored history with a date filter, and your users' Deribit account data.

Errors are `{"detail": "<sentence>", "code": "<machine_code>"}`.
"""


def create_app(settings: Settings, *, with_ingest: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = await Runtime.start(settings, with_ingest=with_ingest)
        # What start-up built lives as long as the process: move it out of the collector's
        # reach, so full collections stop walking it (their pauses were the p99 of history
        # pages, bench/results/history.md).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await app.state.runtime.stop()

    app = FastAPI(
        title="CryptoMarket",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    if settings.CORS_ORIGINS:
        # Browsers on these origins may call the API and open streams (with ?token=).
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.CORS_ORIGINS,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            allow_credentials="*" not in settings.CORS_ORIGINS,
        )
    app.include_router(users.router)
    app.include_router(subscriptions.router)
    app.include_router(streaming.router)
    app.include_router(prices.router)
    app.include_router(health.router)
    app.include_router(web.router)
    return app
