"""Embedded mode: `serve` runs the periodic jobs itself (here, the gap backfill)."""

from datetime import UTC, datetime

from sqlalchemy import func, insert, select

from __tests__.helpers import eventually, eventually_async
from __tests__.service import running_service
from cryptomarket.core.tables import build_tables
from cryptomarket.deribit.simulator import Simulator


async def test_serve_backfills_a_recorded_gap_on_its_own(
    simulator: Simulator, sqlite_url: str
) -> None:
    tables = build_tables("sqlite")
    async with running_service(simulator, sqlite_url, JOBS_GAP_INTERVAL=0.5) as service:
        database = service.runtime.database
        assert service.runtime.scheduler is not None
        await eventually(lambda: len(simulator.history("eth_usd")) >= 5, what="eth_usd ticks")
        history = simulator.history("eth_usd")  # not tracked: only the job can store these
        start, end = history[0][0], history[-1][0]
        async with database.transaction() as connection:
            await connection.execute(
                insert(tables.price_gaps).values(
                    ticker="eth_usd",
                    from_ts=start,
                    to_ts=end,
                    reason="test",
                    recorded_at=datetime.now(UTC),
                )
            )

        async def filled() -> bool:
            async with database.reading() as connection:
                gaps = await connection.scalar(select(func.count()).select_from(tables.price_gaps))
                ticks = await connection.scalar(
                    select(func.count())
                    .select_from(tables.price_tickers)
                    .where(tables.price_tickers.c.ticker == "eth_usd")
                )
            return gaps == 0 and ticks == len(history)

        await eventually_async(filled, timeout=10, what="the gap backfilled by the scheduler")
        metrics = (await service.client.get("/metrics")).text
        runs = 'cryptomarket_job_runs_total{job="backfill_gaps"}'
        assert any(
            line.startswith(runs) and float(line.split()[-1]) >= 1 for line in metrics.splitlines()
        )
    assert service.runtime.scheduler._tasks == []  # stopped with the runtime
