"""The `cryptomarket` command: serve, ingest, simulate, migrate, backfill."""

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from cryptomarket.app import create_app
from cryptomarket.core.config import Settings, SettingsError, load_settings
from cryptomarket.core.db import database_urls
from cryptomarket.core.logging import configure_logging, mask_secrets
from cryptomarket.core.migrate import upgrade
from cryptomarket.core.server import make_server
from cryptomarket.deribit.simulator import DEFAULT_ACCOUNTS, SimulatorConfig, load_accounts, run
from cryptomarket.distributed.ingest_leader import run_ingest
from cryptomarket.prices.backfill import RANGE_NAMES
from cryptomarket.prices.history import BackfillError, load_history

app = typer.Typer(
    name="cryptomarket",
    help="CryptoMarket: a self-hosted gateway between your applications and Deribit.",
    no_args_is_help=True,
    add_completion=False,
)


def _settings() -> Settings:
    """Load the settings or stop with the one line that names the bad one."""
    try:
        settings = load_settings()
    except SettingsError as error:
        typer.echo(f"cryptomarket: {error}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.LOG_LEVEL, json_lines=settings.LOG_JSON)
    return settings


def _run_until_signal(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until it returns or SIGINT/SIGTERM cancels it (its clean-up still runs)."""

    async def runner() -> None:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())


def _fail(command: str, message: str) -> NoReturn:
    typer.echo(f"cryptomarket {command}: {message}", err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (default APP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default APP_PORT).")] = None,
) -> None:
    """Run the API (and, without REDIS_URL, ingest and the periodic jobs) in one process."""
    settings = _settings()
    if not settings.distributed:
        _migrate(settings)  # embedded mode brings its own database up to date
    application = create_app(settings, with_ingest=not settings.distributed)
    server = make_server(
        application, host or settings.APP_HOST, port or settings.APP_PORT, proxy_headers=True
    )
    uvicorn_exit = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        # Streams never end on their own: end them, so the graceful shutdown can finish.
        runtime = getattr(application.state, "runtime", None)
        if runtime is not None and server.config.loaded:
            asyncio.get_event_loop().call_soon_threadsafe(runtime.begin_shutdown)
        uvicorn_exit(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run()


@app.command()
def ingest() -> None:
    """Hold the upstream market-data connection (distributed mode; one active per deployment)."""
    settings = _settings()
    if not settings.distributed:
        _fail(
            "ingest",
            "REDIS_URL is not set: without Redis, `cryptomarket serve` runs ingest itself "
            "(embedded mode)",
        )
    _run_until_signal(run_ingest(settings))


@app.command()
def migrate() -> None:
    """Upgrade the database to the newest schema (never downgrades)."""
    _migrate(_settings())
    typer.echo("database schema is up to date")


@app.command()
def backfill(
    ticker: Annotated[str, typer.Option(help="Index name, e.g. btc_usd.")],
    range_: Annotated[
        str,
        typer.Option("--range", help=f"How far back: {', '.join(RANGE_NAMES)}."),
    ] = "1d",
) -> None:
    """Load a ticker's history from Deribit into the database, with a progress bar."""
    settings = _settings()
    if range_ not in RANGE_NAMES:
        _fail("backfill", f"--range must be one of {', '.join(RANGE_NAMES)}")
    try:
        stored = asyncio.run(load_history(settings, ticker, range_))
    except BackfillError as error:
        _fail("backfill", str(error))
    typer.echo(f"{ticker}: {stored} points from Deribit's {range_} history are in the database")


def _migrate(settings: Settings) -> None:
    urls = database_urls(settings)
    try:
        upgrade(urls.sync_url)
    except Exception as error:  # any failure: one line, no traceback
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        _fail("migrate", f"cannot migrate the {urls.dialect} database: {mask_secrets(reason)}")


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind (0 picks a free one).")] = 8765,
    tick_interval: Annotated[
        float, typer.Option(min=0.001, help="Seconds between index ticks.")
    ] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed of the price walk.")] = None,
    accounts: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="JSON list of accounts (default: sim-alice, sim-bob)."
        ),
    ] = None,
    min_heartbeat: Annotated[
        float, typer.Option(min=0.1, help="Smallest heartbeat interval accepted (Deribit: 10 s).")
    ] = 10.0,
    log_json: Annotated[bool, typer.Option(help="Log JSON lines.")] = False,
) -> None:
    """Run the Deribit simulator: ws://HOST:PORT/ws/api/v2, no network or account needed."""
    configure_logging("INFO", json_lines=log_json)
    try:
        config = SimulatorConfig(
            host=host,
            port=port,
            tick_interval=tick_interval,
            seed=seed,
            min_heartbeat_interval=min_heartbeat,
            accounts=load_accounts(accounts) if accounts else list(DEFAULT_ACCOUNTS),
        )
    except ValueError as error:
        _fail("simulate", str(error))
    try:
        _run_until_signal(run(config))
    except OSError as error:
        _fail("simulate", f"cannot listen on {host}:{port}: {error.strerror or error}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
