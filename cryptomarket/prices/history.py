"""`cryptomarket backfill`: a ticker's history from Deribit into the store, with a progress bar."""

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import SQLAlchemyError

from cryptomarket.core.config import Settings
from cryptomarket.core.db import Database, database_urls
from cryptomarket.deribit.errors import DeribitError, DeribitTransportError
from cryptomarket.jobs.deribit import job_pool
from cryptomarket.prices.backfill import chart_source, parse_points
from cryptomarket.prices.models import Tick
from cryptomarket.prices.repository import PriceRepository
from cryptomarket.prices.tickers import CatalogueUnavailable, TickerCatalogue

BATCH = 5_000


class BackfillError(Exception):
    """The history could not be loaded; the message says why in one line."""


async def load_history(settings: Settings, ticker: str, range_name: str) -> int:
    """Fetch `range_name` of the ticker's history and store it (idempotently); returns the count."""
    try:
        async with job_pool(settings) as pool:  # within the deployment's limits, as jobs are
            if not await TickerCatalogue(pool.call).contains(ticker):
                raise BackfillError(f"Deribit has no index named {ticker!r}")
            points = parse_points(ticker, await chart_source(pool.call)(ticker, range_name))
    except (DeribitError, DeribitTransportError, CatalogueUnavailable) as error:
        raise BackfillError(f"Deribit: {error}") from None
    database = Database(database_urls(settings).async_url)
    try:
        await _store(database, ticker, range_name, points)
    except (SQLAlchemyError, OSError) as error:
        raise BackfillError(f"database: {type(error).__name__}") from None
    finally:
        await database.dispose()
    return len(points)


async def _store(database: Database, ticker: str, range_name: str, points: list[Tick]) -> None:
    with Progress(
        TextColumn(f"{ticker} {range_name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("storing", total=len(points))
        for start in range(0, len(points), BATCH):
            batch = points[start : start + BATCH]
            async with database.transaction() as connection:
                await PriceRepository(connection, database.tables).add_ticks(batch)
            progress.advance(task, len(batch))
