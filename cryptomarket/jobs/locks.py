"""A Redis lock per job, so overlapping runs of one job skip instead of doing the work twice.

The lock is short-lived and renewed by its holder as the run goes on: a worker killed mid-run
holds the next runs back only until its lock expires, not for as long as a run may take.
"""

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


@dataclass
class JobLock:
    redis: Redis
    key: str
    token: str
    ttl_ms: int
    held: bool

    def extend(self) -> bool:
        """Give the lock its full time again; False when it was lost (expired, taken)."""
        if self.held:
            self.held = bool(self.redis.eval(EXTEND, 1, self.key, self.token, self.ttl_ms))
        return self.held


@contextmanager
def job_lock(redis: Redis, name: str, ttl_seconds: float) -> Iterator[JobLock]:
    """Yields the lock, `held` when this run has it; it expires by itself if the holder dies."""
    key = f"cryptomarket:job-lock:{name}"
    token = secrets.token_hex(16)
    ttl_ms = max(1, int(ttl_seconds * 1000))
    held = bool(redis.set(key, token, nx=True, px=ttl_ms))
    lock = JobLock(redis, key, token, ttl_ms, held)
    try:
        yield lock
    finally:
        if lock.held:
            redis.eval(RELEASE, 1, key, token)
