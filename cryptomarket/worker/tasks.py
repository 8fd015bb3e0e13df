"""The Celery tasks: each calls its job function; time limits, retries with backoff.

Every job is idempotent, so a retry, a redelivery after a lost worker, or two runs at once store
nothing twice.
"""

import logging
from typing import Any

from celery import Task
from celery.signals import task_failure, task_retry, task_success
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from cryptomarket.deribit.errors import DeribitError, DeribitTransportError
from cryptomarket.distributed.job_counts import count_job
from cryptomarket.jobs import gaps, index_names, persist, profiles, retention, sessions
from cryptomarket.worker.app import app, settings
from cryptomarket.worker.resources import resources

logger = logging.getLogger("cryptomarket.worker")


@task_success.connect
def _succeeded(sender: Task, **_: Any) -> None:
    count_job(resources(settings).redis, _job_name(sender), ok=True)


@task_failure.connect
@task_retry.connect
def _failed(sender: Task, **_: Any) -> None:
    count_job(resources(settings).redis, _job_name(sender), ok=False)


def _job_name(task: Task) -> str:
    """`cryptomarket.persist_ticks` -> `persist_ticks`, as the embedded scheduler names jobs."""
    return str(task.name).removeprefix("cryptomarket.")


RETRY: dict[str, Any] = {
    "autoretry_for": (DBAPIError, RedisError, OSError, DeribitTransportError, DeribitError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 5,
}


@app.task(name="cryptomarket.persist_ticks", soft_time_limit=50, time_limit=60, **RETRY)
def persist_ticks() -> int:
    r = resources(settings)
    written = persist.persist_ticks(r.redis, r.engine, r.tables, r.store_interval)
    if written:
        logger.debug("persisted %d tick(s)", written)
    return written


@app.task(name="cryptomarket.backfill_gaps", soft_time_limit=240, time_limit=300, **RETRY)
def backfill_gaps() -> int:
    r = resources(settings)
    return gaps.backfill_gaps(settings, r.engine, r.tables)


@app.task(name="cryptomarket.refresh_profiles", soft_time_limit=240, time_limit=300, **RETRY)
def refresh_profiles() -> int:
    r = resources(settings)
    return profiles.refresh_profiles(settings, r.engine, r.tables, r.redis)


@app.task(name="cryptomarket.refresh_index_names", soft_time_limit=50, time_limit=60, **RETRY)
def refresh_index_names() -> int:
    r = resources(settings)
    return index_names.refresh_index_names(settings, r.redis)


@app.task(name="cryptomarket.prune_history", soft_time_limit=540, time_limit=600, **RETRY)
def prune_history() -> int:
    r = resources(settings)
    return retention.prune_history(r.engine, r.tables, settings.HISTORY_RETENTION_DAYS)


@app.task(name="cryptomarket.purge_sessions", soft_time_limit=50, time_limit=60, **RETRY)
def purge_sessions() -> int:
    r = resources(settings)
    return sessions.purge_sessions(r.engine, r.tables)
