"""When each job runs (Celery beat). A run that cannot start in time is dropped, not queued up."""

from typing import Any

from cryptomarket.core.config import Settings

HOUR = 3600.0


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    def every(seconds: float, task: str) -> dict[str, Any]:
        return {
            "task": f"cryptomarket.{task}",
            "schedule": seconds,
            "options": {"expires": max(5.0, seconds * 5)},
        }

    return {
        "persist-ticks": every(settings.JOBS_PERSIST_INTERVAL, "persist_ticks"),
        "backfill-gaps": every(settings.JOBS_GAP_INTERVAL, "backfill_gaps"),
        "refresh-profiles": every(HOUR / 4, "refresh_profiles"),
        "refresh-index-names": every(HOUR, "refresh_index_names"),
        "prune-history": every(HOUR, "prune_history"),
        "purge-sessions": every(HOUR, "purge_sessions"),
    }
