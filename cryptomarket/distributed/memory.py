"""How full Redis is: used memory against `maxmemory`, read from `INFO memory`.

Redis runs with `noeviction` (docker-compose.yml): nothing is evicted behind our back, so a full
Redis refuses writes instead (the ticks, the lease, Celery's broker). The ingest leader keeps the
tick stream small enough (streaming/stream_bounds.py); `/health` and `/metrics` show how close it
gets, and say `degraded` past NEAR_LIMIT.
"""

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

NEAR_LIMIT = 0.8  # share of maxmemory past which /health says degraded
MIB = 1024 * 1024


@dataclass(frozen=True)
class RedisMemory:
    used: int  # bytes, as Redis counts them against maxmemory
    limit: int  # maxmemory in bytes; 0 when unlimited
    policy: str

    @property
    def share(self) -> float | None:
        """used / limit, or None without a limit."""
        return self.used / self.limit if self.limit else None

    @property
    def near_limit(self) -> bool:
        share = self.share
        return share is not None and share >= NEAR_LIMIT

    def describe(self) -> str:
        if not self.limit:
            return f"{self.used / MIB:.1f} MiB used (no limit)"
        return (
            f"{self.used / MIB:.1f} of {self.limit / MIB:.1f} MiB used "
            f"({100 * (self.share or 0):.0f}%)"
        )


def memory_of(info: dict[str, Any]) -> RedisMemory:
    """From the answer to `INFO memory`."""
    return RedisMemory(
        used=int(info.get("used_memory", 0)),
        limit=int(info.get("maxmemory", 0)),
        policy=str(info.get("maxmemory_policy", "")),
    )


async def read_memory(redis: Redis) -> RedisMemory:
    info: dict[str, Any] = await redis.info("memory")
    return memory_of(info)
