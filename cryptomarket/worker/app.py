"""The Celery application: Redis as broker, the beat schedule, conservative delivery.

Two queues, so persistence never waits behind maintenance: `persist` carries only the 1 s job
that moves ticks from the Redis stream into the database; `maintenance` carries every other job
(gap backfill and profile refresh up to 300 s, pruning up to 600 s). Deployed, each queue has a
worker of its own (`worker -Q persist`, `worker -Q maintenance`); a worker started without `-Q`
consumes both, which is enough for development.
"""

import sys

from celery import Celery
from kombu.entity import Queue

from cryptomarket.core.config import Settings, SettingsError, load_settings
from cryptomarket.core.logging import configure_logging
from cryptomarket.worker.schedule import beat_schedule

PERSIST_QUEUE = "persist"
MAINTENANCE_QUEUE = "maintenance"


def _settings() -> Settings:
    """The settings, or exit with the one line that says what is wrong."""
    try:
        settings = load_settings()
    except SettingsError as error:
        sys.exit(f"cryptomarket worker: {error}")
    if settings.REDIS_URL is None:
        sys.exit("cryptomarket worker: REDIS_URL is not set (Celery runs in distributed mode only)")
    configure_logging(settings.LOG_LEVEL, json_lines=settings.LOG_JSON)
    return settings


settings = _settings()
app = Celery("cryptomarket", broker=settings.REDIS_URL)
app.conf.update(
    task_ignore_result=True,
    task_acks_late=True,  # a task lost with its worker runs again; every task is idempotent
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    timezone="UTC",
    beat_schedule=beat_schedule(settings),
    task_queues=[Queue(name) for name in (PERSIST_QUEUE, MAINTENANCE_QUEUE)],  # type: ignore[no-untyped-call]
    task_default_queue=MAINTENANCE_QUEUE,
    task_routes={"cryptomarket.persist_ticks": {"queue": PERSIST_QUEUE}},
)
