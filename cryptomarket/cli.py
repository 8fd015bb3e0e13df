"""The `cryptomarket` command: serve, ingest, simulate, migrate, backfill, rotate-keys."""

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import SQLAlchemyError

from cryptomarket.app import create_app
from cryptomarket.core.config import Settings, SettingsError, load_settings
from cryptomarket.core.db import create_sync_engine, database_urls
from cryptomarket.core.logging import configure_logging, mask_secrets
from cryptomarket.core.migrate import upgrade
from cryptomarket.core.server import make_server
from cryptomarket.core.tables import build_tables
from cryptomarket.deribit.simulator import DEFAULT_ACCOUNTS, SimulatorConfig, load_accounts, run
from cryptomarket.distributed.ingest_leader import run_ingest
from cryptomarket.prices.backfill import RANGE_NAMES
from cryptomarket.prices.history import BackfillError, load_history
from cryptomarket.users.rotation import BATCH, count_users, rotate_secrets
from cryptomarket.users.secrets import SecretBox

app = typer.Typer(
    name="cryptomarket",
    help="CryptoMarket: a self-hosted gateway between your applications and Deribit.",
    epilog=(
        "Settings come from the environment or .env (every one is in .env.example). "
        "No Deribit account or network? Run `cryptomarket simulate`, then `cryptomarket serve` "
        "with DERIBIT_WS_URL=ws://127.0.0.1:8765/ws/api/v2."
    ),
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
    host: Annotated[
        str | None, typer.Option(help="Address to listen on.", show_default="APP_HOST, 127.0.0.1")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Port to listen on.", show_default="APP_PORT, 8003")
    ] = None,
) -> None:
    """Serve the HTTP API and the SSE streams.

    Without REDIS_URL (embedded mode) this one process also migrates the database, holds the
    Deribit market-data connection and runs the periodic jobs. API docs: /docs.
    """
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
    """Hold the Deribit market-data connection and publish the ticks (distributed mode).

    Needs REDIS_URL. One instance is active per deployment; another one waits as a standby.
    """
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
    """Upgrade the database to the newest schema; never downgrades, never drops data.

    The database is DATABASE_URL, else SQLite (DEBUG=True) or PostgreSQL (DEBUG=False).
    """
    _migrate(_settings())
    typer.echo("database schema is up to date")


@app.command()
def backfill(
    ticker: Annotated[str, typer.Option(help="Deribit index name, e.g. btc_usd.")],
    range_: Annotated[
        str,
        typer.Option("--range", help=f"How far back: {', '.join(RANGE_NAMES)} (1m is 30 days)."),
    ] = "1d",
) -> None:
    """Load a ticker's price history from Deribit into the database, with a progress bar.

    Safe to repeat: prices already stored are not stored twice.
    """
    settings = _settings()
    if range_ not in RANGE_NAMES:
        _fail("backfill", f"--range must be one of {', '.join(RANGE_NAMES)}")
    try:
        stored = asyncio.run(load_history(settings, ticker, range_))
    except BackfillError as error:
        _fail("backfill", str(error))
    typer.echo(f"{ticker}: {stored} points from Deribit's {range_} history are in the database")


@app.command("rotate-keys")
def rotate_keys(
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only count the secrets per key; exit 1 while any needs an old key."
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Users per committed batch.")] = BATCH,
) -> None:
    """Re-encrypt every stored Deribit secret under the first key of ENCRYPTION_KEYS.

    Afterwards the other keys can be removed. Safe to repeat and to interrupt: each batch is
    committed, and a rerun skips what is already under the first key.
    """
    settings = _settings()
    if not settings.ENCRYPTION_KEYS:
        _fail("rotate-keys", "ENCRYPTION_KEYS is not set: there is no key to re-encrypt under")
    urls = database_urls(settings)
    engine = create_sync_engine(urls.sync_url)
    box = SecretBox(settings.ENCRYPTION_KEYS)
    try:
        tables = build_tables(urls.dialect)
        with Progress(
            TextColumn("checking" if check else "re-encrypting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            transient=check,
        ) as progress:
            task = progress.add_task("secrets", total=count_users(engine, tables))
            census = rotate_secrets(
                engine,
                tables,
                box,
                dry_run=check,
                batch_size=batch_size,
                on_batch=lambda rows: progress.advance(task, rows),
            )
    except (SQLAlchemyError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        _fail("rotate-keys", f"{urls.dialect} database: {mask_secrets(reason)}")
    finally:
        engine.dispose()
    unreadable = (
        f"; {census.unreadable} under no configured key (their users must sign in again)"
        if census.unreadable
        else ""
    )
    if check:
        typer.echo(
            f"{census.current} secrets under the first key, {census.old} under an older key"
            f"{unreadable}"
        )
        if census.old:
            raise typer.Exit(1)
        return
    typer.echo(
        f"{census.rotated} secrets re-encrypted under the first key, {census.current} already "
        f"were{unreadable}"
    )


def _migrate(settings: Settings) -> None:
    urls = database_urls(settings)
    try:
        upgrade(urls.sync_url)
    except Exception as error:  # any failure: one line, no traceback
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        _fail("migrate", f"cannot migrate the {urls.dialect} database: {mask_secrets(reason)}")


@app.command()
def simulate(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8765,
    tick_interval: Annotated[
        float,
        typer.Option(min=0.001, help="Mean seconds between two ticks of an index (jittered)."),
    ] = 1.0,
    chart_spacing: Annotated[
        float,
        typer.Option(
            min=0.0, help="Seconds between the 1h chart's points (0: every live tick; else >= 1)."
        ),
    ] = 60.0,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the price walk, for repeatable prices.")
    ] = None,
    accounts: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, help="JSON list of accounts (default: sim-alice, sim-bob)."
        ),
    ] = None,
    min_heartbeat: Annotated[
        float, typer.Option(min=0.1, help="Smallest heartbeat interval accepted (Deribit: 10 s).")
    ] = 10.0,
    record_hours: Annotated[
        float,
        typer.Option(min=0.0, help="Hours of produced ticks sim/produced remembers (at least 1)."),
    ] = 2.0,
    instrument_interval: Annotated[
        float,
        typer.Option(min=0.001, help="Mean seconds between two updates of an instrument."),
    ] = 0.1,
    log_json: Annotated[bool, typer.Option(help="Log one JSON object per line.")] = False,
) -> None:
    """Run the Deribit simulator at ws://HOST:PORT/ws/api/v2: no network or account needed.

    It speaks the part of Deribit's API the service uses, ticks every index on its own clock
    about once a second, and takes sim/ control calls (see the README).
    """
    configure_logging("INFO", json_lines=log_json)
    try:
        config = SimulatorConfig(
            host=host,
            port=port,
            tick_interval=tick_interval,
            seed=seed,
            min_heartbeat_interval=min_heartbeat,
            record_hours=record_hours,
            chart_spacing=chart_spacing,
            instrument_interval=instrument_interval,
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
