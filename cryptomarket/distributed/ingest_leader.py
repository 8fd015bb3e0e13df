"""`cryptomarket ingest`: the upstream market-data connection, held by one process at a time.

Every ingest process competes for a lease in Redis. The one holding it connects to Deribit,
follows the tracked tickers plus every stored subscription (recounted from the store on each
control-channel message, on every resubscription and every RECOUNT_EVERY seconds), and publishes
each tick on the Redis bus, which also appends it to the stream the persist job writes from. The
others wait; when the leader dies its lease runs out within LEASE_TTL seconds and one of them takes
over, backfilling from the newest tick the old leader published. A process that cannot renew its
lease stops publishing at once and goes back to waiting.
"""

import asyncio
import contextlib
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cryptomarket.core.config import Settings
from cryptomarket.core.db import Database, database_urls
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.connection import DeribitConnection
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.distributed.connect import async_redis, cancel_for_sure
from cryptomarket.distributed.control import ControlChannel, SubscriptionChange
from cryptomarket.distributed.deribit_credits import deployment_limits
from cryptomarket.distributed.deribit_sockets import DeploymentSockets
from cryptomarket.distributed.leader import Lease
from cryptomarket.distributed.outages import OutageLog
from cryptomarket.prices.backfill import chart_source
from cryptomarket.prices.ingest import Ingest
from cryptomarket.runtime import stale_after
from cryptomarket.streaming.bus import upstream_status
from cryptomarket.streaming.redis_bus import LATEST_PREFIX, RedisBus, read_latest
from cryptomarket.users.repository import UserRepository

logger = logging.getLogger("cryptomarket.ingest")

LEADER_KEY = "cryptomarket:ingest:leader"
LEASE_TTL = 3.0  # seconds a dead leader keeps the lease
RENEW_EVERY = 1.0
WAIT_POLL = 0.5  # how often a waiting process tries to take the lease
RECOUNT_EVERY = 30.0
RECOUNT_RETRY = 2.0  # seconds before a recount the store refused is tried again
LEAD_RETRY = 2.0  # seconds before leading again after the lead failed
HISTORY_POOL_SIZE = 2  # connections for backfill requests


async def run_ingest(settings: Settings) -> None:
    """Wait for the lease, lead until it is lost, wait again; until cancelled."""
    if settings.REDIS_URL is None:
        raise ValueError("REDIS_URL is required")
    redis = async_redis(settings.REDIS_URL)
    database = Database(database_urls(settings).async_url, pool_size=2)
    lease = Lease(redis, LEADER_KEY, LEASE_TTL)
    try:
        while True:
            await _wait_for(lease)
            logger.info("leading: this process now holds the upstream connection")
            try:
                await _lead(settings, redis, database, lease)
            except Exception:  # whatever failed, the process goes on: wait to lead again
                logger.exception("leading failed; leading again shortly")
                await asyncio.sleep(LEAD_RETRY)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await lease.release()  # a clean exit hands over at once
        await database.dispose()
        await redis.aclose()


async def _wait_for(lease: Lease) -> None:
    said = ""
    while True:
        try:
            if await lease.acquire():
                return
            news = (
                "holding the lease; waiting for an earlier leader to stand down"
                if lease.valid
                else "another ingest process leads; waiting to take over"
            )
        except (RedisError, OSError) as error:
            news = f"Redis unreachable, waiting: {type(error).__name__}"
        if news != said:
            logger.info(news)
            said = news
        await asyncio.sleep(WAIT_POLL)  # a lease has no event to await


async def _lead(settings: Settings, redis: Redis, database: Database, lease: Lease) -> None:
    """Lead with the deployment's Deribit limits: the market-data socket holds a ticket."""
    sockets, shared = deployment_limits(
        redis,
        OutageLog("redis"),
        limit=settings.DERIBIT_MAX_CONNECTIONS,
        want=HISTORY_POOL_SIZE + 1,
    )
    try:
        if await _market_socket_ticket(sockets, lease) is not None:
            await _lead_with(settings, redis, database, lease, sockets, CreditBudget(shared=shared))
    finally:
        await sockets.close()


async def _market_socket_ticket(sockets: DeploymentSockets, lease: Lease) -> str | None:
    """Room in the deployment for the market-data socket, renewing the lease meanwhile.

    Other processes that hold more than their share give idle sockets back within a renewal
    or two; None if the lease is lost first.
    """
    said = False
    while lease.valid:
        ticket = await sockets.try_open()
        if ticket is not None:
            return ticket
        if not said:
            logger.warning(
                "all %d Deribit sockets of the deployment are taken: waiting for one",
                sockets.limit,
            )
            said = True
        await asyncio.sleep(RENEW_EVERY)  # room has no event to await across processes
        with contextlib.suppress(RedisError, OSError):
            await lease.renew()
    return None


async def _lead_with(  # noqa: PLR0917  # the leader's parts, passed down once
    settings: Settings,
    redis: Redis,
    database: Database,
    lease: Lease,
    sockets: DeploymentSockets,
    budget: CreditBudget,
) -> None:
    heartbeat, timeout = settings.DERIBIT_HEARTBEAT_INTERVAL, settings.DERIBIT_REQUEST_TIMEOUT
    pool = DeribitPool(
        settings.DERIBIT_WS_URL,
        size=HISTORY_POOL_SIZE,
        budget=budget,
        gate=sockets,
        heartbeat_interval=heartbeat,
        request_timeout=timeout,
    )
    connection = DeribitConnection(
        settings.DERIBIT_WS_URL,
        budget=budget,
        heartbeat_interval=heartbeat,
        request_timeout=timeout,
        name="deribit-ingest",
    )
    bus = RedisBus(
        redis, backoff=lambda: Backoff(initial=0.1, maximum=5.0), may_publish=lambda: lease.valid
    )
    ingest = Ingest(
        connection,
        None,
        bus,
        database=database,
        history=chart_source(pool.call),
        tracked=settings.TRACKED_TICKERS,
        stale_after=stale_after(settings.DERIBIT_HEARTBEAT_INTERVAL),
    )
    control = ControlChannel(redis, OutageLog("redis"))
    recount = Recount(ingest, database)
    # The lease is renewed from the start: setting up may take longer than its TTL.
    keeping = asyncio.create_task(_keep(lease, recount), name="ingest-lease")
    try:
        await _continue_from_published(redis, ingest, database)
        bus.start(publishing=True, receiving=False)
        bus.publish(upstream_status(ingest.status))  # a new leader: what it has, kept in Redis
        recount.start()
        control.listen(recount.on_change, recount.on_subscribed)
        await ingest.start()
        await keeping
    finally:
        await cancel_for_sure([keeping])
        await control.stop()
        await recount.stop()
        await ingest.stop()
        if not lease.valid:
            dropped = bus.drop_backlog()
            if dropped:
                logger.warning("lost the lease with %d event(s) unpublished; dropped", dropped)
        await bus.stop()
        await pool.close()


async def _keep(lease: Lease, recount: "Recount") -> None:
    """Renew the lease until it is lost (or the process is stopped)."""
    next_recount = time.monotonic() + RECOUNT_EVERY
    while True:
        # Wake at the local deadline at the latest: past it another process may lead, so this
        # one must let go of the upstream then, not a renew interval later.
        await asyncio.sleep(min(RENEW_EVERY, lease.remaining))
        try:
            if not lease.valid:
                raise TimeoutError
            async with asyncio.timeout(lease.remaining):
                kept = await lease.renew()
        except (RedisError, OSError, TimeoutError) as error:
            kept = lease.valid  # Redis away: still ours until the TTL would have run out
            if not kept:
                logger.warning("could not renew the lease in time: %s", type(error).__name__)
        if not kept:
            logger.warning("lost the lease: stopped publishing, waiting to lead again")
            return
        if time.monotonic() >= next_recount:
            recount.request()
            next_recount = time.monotonic() + RECOUNT_EVERY


async def _continue_from_published(redis: Redis, ingest: Ingest, database: Database) -> None:
    """Follow the stored subscriptions, and backfill from the newest tick any leader published
    (Redis), not only from the store, which the persist job fills a little later. With the
    store away, every ticker published lately is followed until a recount can read it: each
    is then caught up from where the last leader stopped, not left out until the store is
    back (its ticks meanwhile neither stored nor in a gap)."""
    try:
        async with database.reading() as connection:
            counts = await UserRepository(connection, database.tables).subscribed_tickers()
    except Exception as error:
        logger.warning(
            "stored subscriptions unknown (%s): following the tickers published lately",
            type(error).__name__,
        )
        counts = dict.fromkeys(await _published_lately(redis), 1)
    tickers = sorted(ingest.tracked | set(counts))
    try:
        latest = await read_latest(redis, tickers)
    except (RedisError, OSError) as error:
        logger.warning("newest published ticks unknown: %s", type(error).__name__)
        latest = {}
    for ticker, tick in latest.items():
        ingest.last_seen[ticker] = max(tick.timestamp, ingest.last_seen.get(ticker, 0))
    await ingest.follow(counts)


async def _published_lately(redis: Redis) -> list[str]:
    """The tickers with a latest tick in Redis (kept a day after each leader's last)."""
    try:
        keys = [key async for key in redis.scan_iter(match=LATEST_PREFIX + "*", count=1_000)]
    except (RedisError, OSError) as error:
        logger.warning("tickers published lately unknown: %s", type(error).__name__)
        return []
    names = [key.decode() if isinstance(key, bytes) else str(key) for key in keys]
    return [name.removeprefix(LATEST_PREFIX) for name in names]


class Recount:
    """Follow the stored subscriptions: recount on request, one recount at a time."""

    def __init__(self, ingest: Ingest, database: Database) -> None:
        self.ingest = ingest
        self.database = database
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ingest-recount")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def request(self) -> None:
        self._wanted.set()

    async def on_change(self, _change: SubscriptionChange) -> None:
        self.request()

    async def on_subscribed(self) -> None:
        self.request()  # changes announced while we were not listening are in the store

    async def now(self) -> None:
        async with self.database.reading() as connection:
            counts = await UserRepository(connection, self.database.tables).subscribed_tickers()
        await self.ingest.follow(counts)

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.now()
            except Exception as error:  # the store may be down: again shortly
                logger.warning("could not recount the subscriptions: %s", type(error).__name__)
                await asyncio.sleep(RECOUNT_RETRY)
                self._wanted.set()
