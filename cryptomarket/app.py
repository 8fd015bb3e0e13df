"""The FastAPI application."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from cryptomarket import __version__, health
from cryptomarket.core.config import Settings
from cryptomarket.core.errors import install_error_handlers
from cryptomarket.prices import endpoints as prices
from cryptomarket.runtime import Runtime
from cryptomarket.streaming import endpoints as streaming
from cryptomarket.streaming.response import quiet_dropped_streams
from cryptomarket.subscriptions import endpoints as subscriptions
from cryptomarket.users import endpoints as users

DESCRIPTION = """
A gateway between your applications and Deribit: index prices live over Server-Sent Events,
their stored history with a date filter, and your users' Deribit account data.

Errors are `{"detail": "<sentence>", "code": "<machine_code>"}`.
"""


class CryptoMarketAPI(FastAPI):
    """FastAPI, with the SSE stream served in front of its middleware stack (see
    streaming/endpoints.py for why)."""

    stream_app: ASGIApp

    def build_middleware_stack(self) -> ASGIApp:
        return StreamFirst(self.stream_app, super().build_middleware_stack())


class StreamFirst:
    def __init__(self, stream: ASGIApp, rest: ASGIApp) -> None:
        self.stream = stream
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if streaming.is_stream_request(scope):
            await self.stream(scope, receive, send)
        else:
            await self.rest(scope, receive, send)


def cors_options(settings: Settings) -> dict[str, Any]:
    return {
        "allow_origins": settings.CORS_ORIGINS,
        "allow_methods": ["GET", "POST", "DELETE"],
        "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID"],
        "allow_credentials": "*" not in settings.CORS_ORIGINS,
    }


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

    app = CryptoMarketAPI(
        title="CryptoMarket",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    if settings.CORS_ORIGINS:
        # Browsers on these origins may call the API and open streams (with ?token=).
        app.add_middleware(CORSMiddleware, **cors_options(settings))
    app.stream_app = streaming.ServeEventStream()
    quiet_dropped_streams()
    if settings.CORS_ORIGINS:
        app.stream_app = CORSMiddleware(app.stream_app, **cors_options(settings))
    app.include_router(users.router)
    app.include_router(subscriptions.router)
    app.include_router(streaming.router)  # documents the stream; StreamFirst serves it
    app.include_router(prices.router)
    app.include_router(health.router)
    return app
