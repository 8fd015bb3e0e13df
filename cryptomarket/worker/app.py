"""The Celery application: Redis as broker, the beat schedule, conservative delivery."""

import sys

from celery import Celery

from cryptomarket.core.config import Settings, SettingsError, load_settings
from cryptomarket.core.logging import configure_logging
from cryptomarket.worker.schedule import beat_schedule


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
)
