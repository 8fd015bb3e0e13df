"""Everything a serving process holds, started and stopped together.

One database engine, one Deribit pool and credit budget, the bus, and, in embedded mode, the
ingest connection with its writer: the process's single instance of each, shared by every request.

In distributed mode (REDIS_URL set) there is no ingest here: the hub is fed from the Redis bus,
profiles, index names and latest prices are cached in Redis, and subscription changes travel on
the control channel to the other replicas and to the ingest process.
"""

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from cryptomarket.core.config import Settings
from cryptomarket.core.db import Database, database_urls
from cryptomarket.core.loop_monitor import LoopMonitor
from cryptomarket.deribit.backoff import Backoff
from cryptomarket.deribit.connection import DeribitConnection
from cryptomarket.deribit.credits import CreditBudget
from cryptomarket.deribit.pool import DeribitPool
from cryptomarket.distributed.cache import RedisCache, shared_index_names
from cryptomarket.distributed.connect import async_redis
from cryptomarket.distributed.control import ControlChannel, SessionEnded
from cryptomarket.distributed.deribit_credits import deployment_limits
from cryptomarket.distributed.deribit_sockets import DeploymentSockets
from cryptomarket.distributed.memory import RedisMemory
from cryptomarket.distributed.outages import OutageLog
from cryptomarket.distributed.rate_limit import RedisBuckets
from cryptomarket.instruments.catalogue import InstrumentCatalogue
from cryptomarket.jobs.scheduler import EmbeddedScheduler
from cryptomarket.kit.buckets import LocalBuckets
from cryptomarket.kit.csv import wants_csv
from cryptomarket.prices.backfill import chart_source
from cryptomarket.prices.ingest import Ingest
from cryptomarket.prices.limits import HistoryLimiter, request_cost
from cryptomarket.prices.models import Tick
from cryptomarket.prices.service import PriceService
from cryptomarket.prices.tickers import TickerCatalogue
from cryptomarket.prices.writer import TickWriter
from cryptomarket.streaming.bus import LocalBus
from cryptomarket.streaming.hub import StreamHub
from cryptomarket.streaming.limits import OpenLimiter
from cryptomarket.streaming.redis_bus import RedisBus, read_latest
from cryptomarket.streaming.replay import Replays
from cryptomarket.streaming.sessions import SIGNED_OUT
from cryptomarket.streaming.stream import Stream
from cryptomarket.subscriptions.service import NoWatchers, SubscriptionService
from cryptomarket.users.limits import AttemptLimiter
from cryptomarket.users.repository import UserRepository
from cryptomarket.users.secrets import SecretBox
from cryptomarket.users.service import UserService, token_hash

logger = logging.getLogger("cryptomarket.runtime")


@dataclass
class Runtime:
    settings: Settings
    database: Database
    budget: CreditBudget
    pool: DeribitPool
    bus: LocalBus
    catalogue: TickerCatalogue
    instruments: InstrumentCatalogue
    prices: PriceService
    users: UserService
    hub: StreamHub
    subscriptions: SubscriptionService
    sign_in_limits: AttemptLimiter = field(default_factory=AttemptLimiter)
    stream_opens: OpenLimiter = field(default_factory=OpenLimiter)
    history_limits: HistoryLimiter = field(default_factory=HistoryLimiter)
    writer: TickWriter | None = None
    ingest: Ingest | None = None
    redis: Redis | None = None
    redis_bus: RedisBus | None = None
    control: ControlChannel | None = None
    redis_outages: OutageLog | None = None
    deribit_sockets: DeploymentSockets | None = None
    scheduler: EmbeddedScheduler | None = None
    # The Celery workers' job runs and failures, as last read from Redis for /metrics.
    worker_job_counts: tuple[dict[str, int], dict[str, int]] = ({}, {})
    redis_memory: RedisMemory | None = None  # as last read for /metrics
    loop_monitor: LoopMonitor = field(default_factory=LoopMonitor)
    replays: Replays = field(init=False)  # Last-Event-ID reads of the store, shared

    def __post_init__(self) -> None:
        self.replays = Replays(
            self.hub,
            self.database,
            store_interval_ms=self.settings.INSTRUMENT_STORE_INTERVAL_MS,
        )

    @classmethod
    async def start(cls, settings: Settings, *, with_ingest: bool = True) -> "Runtime":
        """Start every part; distributed mode (REDIS_URL) never runs ingest in this process."""
        database = Database(database_urls(settings).async_url)
        redis = async_redis(settings.REDIS_URL) if settings.REDIS_URL else None
        outages = OutageLog("redis")
        cache = RedisCache(redis, outages) if redis is not None else None
        sockets, shared = (
            deployment_limits(
                redis,
                outages,
                limit=settings.DERIBIT_MAX_CONNECTIONS,
                want=settings.DERIBIT_POOL_SIZE,
            )
            if redis is not None
            else (None, None)
        )
        budget = CreditBudget(shared=shared)
        pool = DeribitPool(
            settings.DERIBIT_WS_URL,
            size=settings.DERIBIT_POOL_SIZE,
            budget=budget,
            gate=sockets,
            heartbeat_interval=settings.DERIBIT_HEARTBEAT_INTERVAL,
            request_timeout=settings.DERIBIT_REQUEST_TIMEOUT,
        )
        catalogue = TickerCatalogue(
            pool.call if cache is None else shared_index_names(pool.call, cache)
        )
        instruments = InstrumentCatalogue(pool.call)
        prices = PriceService(database, catalogue, settings.TRACKED_TICKERS, instruments)
        hub = StreamHub(
            max_streams=settings.SSE_MAX_STREAMS,
            max_per_user=settings.SSE_MAX_STREAMS_PER_USER,
            max_per_account=settings.SSE_MAX_STREAMS_PER_ACCOUNT,
            client_buffer=settings.SSE_CLIENT_BUFFER,
        )
        hub.on_expired = instruments.mark_expired
        runtime = cls(
            settings=settings,
            database=database,
            budget=budget,
            pool=pool,
            bus=LocalBus(),
            catalogue=catalogue,
            instruments=instruments,
            prices=prices,
            users=UserService(
                database,
                pool,
                SecretBox(settings.ENCRYPTION_KEYS),
                session_ttl=settings.SESSION_TTL,
                cache=cache,
                max_user_ids=settings.MAX_USER_IDS_PER_ACCOUNT,
            ),
            hub=hub,
            subscriptions=SubscriptionService(
                database,
                prices,
                hub,
                NoWatchers(),
                max_per_user=settings.MAX_SUBSCRIPTIONS_PER_USER,
            ),
            deribit_sockets=sockets,
        )
        buckets = RedisBuckets(redis, outages) if redis is not None else LocalBuckets()
        runtime.sign_in_limits = AttemptLimiter(
            burst=settings.SIGN_IN_BURST, per_minute=settings.SIGN_INS_PER_MINUTE, buckets=buckets
        )
        runtime.stream_opens = OpenLimiter(
            burst=settings.SSE_OPEN_BURST, per_minute=settings.SSE_OPENS_PER_MINUTE, buckets=buckets
        )
        runtime.history_limits = HistoryLimiter(
            burst=settings.HISTORY_BURST, per_minute=settings.HISTORY_PER_MINUTE, buckets=buckets
        )
        runtime._recheck_stream_sessions(settings.SSE_SESSION_RECHECK)
        runtime.loop_monitor.start()
        runtime.bus.subscribe(runtime.loop_monitor.poke)  # a fan-out is coming: watch it
        runtime.bus.subscribe(hub.publish)
        hub.start()
        if redis is not None:
            runtime._start_distributed(redis, outages)
        elif with_ingest:
            runtime.writer = TickWriter(
                database, store_interval_ms=settings.INSTRUMENT_STORE_INTERVAL_MS
            )
            runtime.ingest = Ingest(
                DeribitConnection(
                    settings.DERIBIT_WS_URL,
                    budget=budget,
                    heartbeat_interval=settings.DERIBIT_HEARTBEAT_INTERVAL,
                    request_timeout=settings.DERIBIT_REQUEST_TIMEOUT,
                    name="deribit-ingest",
                ),
                runtime.writer,
                runtime.bus,
                database=database,
                history=chart_source(pool.call),
                tracked=settings.TRACKED_TICKERS,
                stale_after=stale_after(settings.DERIBIT_HEARTBEAT_INTERVAL),
            )
            runtime.subscriptions.watchers = runtime.ingest
            runtime.writer.start()
            await runtime._watch_stored_subscriptions()
            await runtime.ingest.start()
            runtime.scheduler = EmbeddedScheduler(settings, refresh_index_names=catalogue.names)
            runtime.scheduler.start()
        return runtime

    def _start_distributed(self, redis: Redis, outages: OutageLog) -> None:
        """Market events from the Redis bus into the hub; changes over the control channel."""
        self.redis, self.redis_outages = redis, outages
        self.redis_bus = RedisBus(redis, backoff=lambda: Backoff(initial=0.1, maximum=5.0))
        self.redis_bus.subscribe(self.loop_monitor.poke)  # a fan-out is coming: watch it
        self.redis_bus.subscribe(self.hub.publish)
        self.redis_bus.start(publishing=False, receiving=True)
        self.control = ControlChannel(redis, outages)
        self.control.on_session_ended = self._end_announced_session
        # Sign-outs announced while the channel was away were never heard: check the store.
        self.control.on_listening = self.hub.sessions.now
        self.control.listen(
            self.subscriptions.apply_announced, self.subscriptions.resync_open_streams
        )
        self.subscriptions.announcer = self.control

        async def latest(tickers: list[str]) -> dict[str, Tick]:
            return await read_latest(redis, tickers)

        self.subscriptions.latest = latest

    def _recheck_stream_sessions(self, interval: float) -> None:
        """Open streams end when their session or key does (streaming/sessions.py)."""
        from cryptomarket.users.auth import ended_streams  # noqa: PLC0415  # it imports this module

        database = self.database

        async def check(streams: list[Stream]) -> dict[Stream, str]:
            return await ended_streams(database, streams)

        self.hub.sessions.check = check
        self.hub.sessions.interval = interval

    async def _watch_stored_subscriptions(self) -> None:
        """Subscriptions survive restarts: ingest follows every stored one from the start."""
        assert self.ingest is not None  # noqa: S101  # called only with ingest
        async with self.database.reading() as connection:
            counts = await UserRepository(connection, self.database.tables).subscribed_tickers()
        await self.ingest.follow(counts)

    def _end_announced_session(self, ended: SessionEnded) -> None:
        """Another replica signed a session out: its streams here end too."""
        self.hub.signed_out.add(ended.session)
        for stream in self.hub.streams_of(ended.user_id):
            if stream.token is not None and token_hash(stream.token) == ended.session:
                self.hub.end_stream(stream, SIGNED_OUT)

    async def end_session_streams(self, user_id: str, token: str) -> None:
        """A session was signed out here: end its streams here and on every other replica."""
        session = token_hash(token)
        self.hub.signed_out.add(session)
        self.hub.end_session(token)
        if self.control is not None:
            await self.control.announce_session_ended(user_id, session)

    def begin_shutdown(self) -> None:
        """The server is going down: end every stream now, so no response holds the exit up."""
        self.hub.shut_down()

    async def stop(self) -> None:
        if self.scheduler is not None:
            await self.scheduler.stop()
        await self.hub.stop()
        await self.users.stop()
        if self.control is not None:
            await self.control.stop()
        if self.redis_bus is not None:
            await self.redis_bus.stop()
        if self.ingest is not None:
            await self.ingest.stop()
        if self.writer is not None:
            await self.writer.stop()
        await self.pool.close()
        if self.deribit_sockets is not None:
            await self.deribit_sockets.close()
        await self.database.dispose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.loop_monitor.stop()


def stale_after(heartbeat_interval: float) -> float:
    """Seconds without a tick before streams are told the prices are stale.

    Deribit ticks about once a second: ten quiet seconds mean something is wrong upstream even
    though the socket is alive. Short test heartbeats (PROJECT_MODE=testing) shorten it as well.
    """
    return min(10.0, 3.0 * heartbeat_interval)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_price_service(runtime: RuntimeDep) -> PriceService:
    return runtime.prices


PriceServiceDep = Annotated[PriceService, Depends(get_price_service)]


async def within_history_limit(request: Request, runtime: RuntimeDep) -> AsyncIterator[None]:
    """The public price routes' cost, spent from the client address's bucket; a big read holds
    its address's turn until its answer is sent (the exit runs after the response)."""
    query = request.query_params
    export = wants_csv(request, query.get("format"))  # as the route will decide it
    address = request.client.host if request.client else "unknown"
    async with runtime.history_limits.admitted(address, request_cost(query.get("limit"), export)):
        yield
