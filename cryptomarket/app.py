"""The FastAPI application."""

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from cryptomarket import __version__, health
from cryptomarket.core.body_limit import BodyLimitMiddleware
from cryptomarket.core.config import Settings
from cryptomarket.core.errors import install_error_handlers
from cryptomarket.core.loop_monitor import LoopMonitor
from cryptomarket.core.metrics import make_registry
from cryptomarket.core.openapi_docs import install_openapi
from cryptomarket.core.request_id import HEADER as REQUEST_ID_HEADER
from cryptomarket.core.request_id import RequestIdMiddleware
from cryptomarket.core.security_headers import SecurityHeadersMiddleware
from cryptomarket.instruments import endpoints as instruments
from cryptomarket.kit.tarpit import Tarpit
from cryptomarket.prices import endpoints as prices
from cryptomarket.runtime import Runtime
from cryptomarket.streaming import endpoints as streaming
from cryptomarket.streaming.response import quiet_dropped_streams
from cryptomarket.subscriptions import endpoints as subscriptions
from cryptomarket.users import endpoints as users
from cryptomarket.web import endpoints as web

DESCRIPTION = """
A gateway between your applications and Deribit: index prices live over Server-Sent Events,
their stored history with a date filter, and your users' Deribit account data.

Sign in with `POST /api/v1/sessions` and a Deribit API key, then press **Authorize** and paste
the token (or rely on the `cm_session` cookie the sign-in sets). Market data
(`/api/v1/prices*`, `/api/v1/tickers`) needs no session.

Errors are `{"detail": "<sentence>", "code": "<machine_code>"}` with the status saying what kind:
401 no or bad credentials, 403 another user's resource, 404 unknown thing, 409 taken user id,
422 invalid input, 429 over a limit, 503 Deribit unreachable. Every response carries an
`X-Request-ID` header (yours, when you send a sane one), also found on the server's log lines.
"""


class CryptoMarketAPI(FastAPI):
    """FastAPI, with the SSE stream served in front of it (see streaming/endpoints.py for why):
    not even the application's own call frames stay alive beside each open stream."""

    stream_app: ASGIApp
    loop_monitor: LoopMonitor | None = None  # told of each request (set by the lifespan)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.loop_monitor is not None:
            self.loop_monitor.poke()
        if streaming.is_stream_request(scope):
            scope["app"] = self  # as Starlette sets it: the route finds the runtime there
            await self.stream_app(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def cors_options(settings: Settings) -> dict[str, Any]:
    return {
        "allow_origins": settings.CORS_ORIGINS,
        "allow_methods": ["GET", "POST", "DELETE"],
        "allow_headers": ["Authorization", "Content-Type", "Last-Event-ID"],
        "allow_credentials": "*" not in settings.CORS_ORIGINS,
        "expose_headers": [REQUEST_ID_HEADER],
    }


YOUNG_GENERATION = 50_000  # objects allocated (less freed) between young collections


def settle_heap() -> None:
    """Tune the cyclic GC once start-up is done (the server's lifespan; benchmarks of the
    server's code paths call it too, to measure what the server runs)."""
    # What start-up built lives as long as the process: move it out of the collector's reach,
    # so full collections stop walking it (their pauses were the p99 of history pages,
    # bench/results/history.md).
    gc.collect()
    gc.freeze()
    # A stream's objects of one tick (its waiter future, the message dicts) live until the next
    # tick, longer than the default young generation (700 allocations) takes to fill at
    # thousands of streams: they were promoted and set off full collections of every
    # connection's objects, 100+ ms each (bench/results/soak.md). A young generation this large
    # lets them die young; a young collection stays a few milliseconds.
    gc.set_threshold(YOUNG_GENERATION, 20, 20)


def create_app(settings: Settings, *, with_ingest: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.runtime = await Runtime.start(settings, with_ingest=with_ingest)
        if isinstance(app, CryptoMarketAPI):
            app.loop_monitor = app.state.runtime.loop_monitor
        settle_heap()
        try:
            yield
        finally:
            await app.state.runtime.stop()

    app = CryptoMarketAPI(
        title="CryptoMarket",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if settings.DOCS_ENABLED else None,
        redoc_url="/redoc" if settings.DOCS_ENABLED else None,
        openapi_url="/openapi.json" if settings.DOCS_ENABLED else None,
    )
    tarpit = Tarpit()  # one per process: a client's refusals are held wherever they come from
    install_error_handlers(app, tarpit)
    install_openapi(app)
    app.state.metrics = make_registry(lambda: getattr(app.state, "runtime", None))
    app.add_middleware(BodyLimitMiddleware)  # innermost: its answers get every header below
    if settings.CORS_ORIGINS:
        # Browsers on these origins may call the API and open streams (with ?token=).
        app.add_middleware(CORSMiddleware, **cors_options(settings))
    docs_paths = (app.docs_url or "", app.redoc_url or "")
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=docs_paths)
    # Outermost: every response gets its id, CORS answers included.
    app.add_middleware(RequestIdMiddleware)
    # The stream, served in front of that stack, gets the same CORS answers and request ids.
    app.stream_app = streaming.ServeEventStream(
        answer_errors=lambda errors: RequestIdMiddleware(
            SecurityHeadersMiddleware(errors, docs_paths=docs_paths)
        ),
        tarpit=tarpit,
    )
    if settings.CORS_ORIGINS:
        app.stream_app = CORSMiddleware(app.stream_app, **cors_options(settings))
    quiet_dropped_streams()
    app.include_router(users.router)
    app.include_router(subscriptions.router)
    app.include_router(streaming.router)  # documents the stream; CryptoMarketAPI serves it
    app.include_router(prices.router)
    app.include_router(instruments.router)
    app.include_router(health.router)
    app.include_router(web.router)
    return app
