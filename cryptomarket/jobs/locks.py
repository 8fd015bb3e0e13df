"""A Redis lock per job, so overlapping runs of one job skip instead of doing the work twice."""

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@contextmanager
def job_lock(redis: Redis, name: str, ttl_seconds: float) -> Iterator[bool]:
    """Yields whether this run holds the lock; it expires by itself if the holder dies."""
    key = f"cryptomarket:job-lock:{name}"
    token = secrets.token_hex(16)
    held = bool(redis.set(key, token, nx=True, px=int(ttl_seconds * 1000)))
    try:
        yield held
    finally:
        if held:
            redis.eval(RELEASE, 1, key, token)
