"""Celery for distributed mode: `celery -A cryptomarket.worker worker` and `... beat`."""

from cryptomarket.worker import tasks
from cryptomarket.worker.app import app

__all__ = ["app", "tasks"]
