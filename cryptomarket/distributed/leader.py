"""A lease in Redis: one holder at a time, kept by renewing it before its TTL runs out.

`SET key token NX PX ttl` takes it; a Lua script renews it only while it still holds our token
(or takes it again if it vanished, as after a Redis restart, when nobody else took it meanwhile);
another releases it only if it is ours. A holder that cannot renew within the TTL must behave as
if it had lost the lease: `valid` turns false at the local deadline.

Redis runs with `noeviction` (docker-compose.yml), so the key is never evicted; and the three
scripts are flagged `allow-oom`, so even a Redis at its memory limit lets the lease be taken,
renewed and released: the leader, which is what trims the tick stream, can never be locked out by
the memory it is there to free.
"""

import secrets
import time

from redis.asyncio import Redis

ACQUIRE = """#!lua flags=allow-oom
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""

RENEW = """#!lua flags=allow-oom
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

RELEASE = """#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    def __init__(self, redis: Redis, key: str, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("a lease needs a positive TTL")
        self.redis = redis
        self.key = key
        self.ttl = ttl
        self.token = secrets.token_hex(16)
        self._valid_until = 0.0

    @property
    def valid(self) -> bool:
        """We hold it, as far as we can know: renewed less than a TTL ago."""
        return time.monotonic() < self._valid_until

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        started = time.monotonic()
        taken = await self.redis.eval(ACQUIRE, 1, self.key, self.token, str(self._ttl_ms))
        if taken:
            self._valid_until = started + self.ttl
        return bool(taken)

    async def renew(self) -> bool:
        """Extend it; False once someone else holds it."""
        started = time.monotonic()
        kept = await self.redis.eval(RENEW, 1, self.key, self.token, str(self._ttl_ms))
        if kept:
            self._valid_until = started + self.ttl
        else:
            self._valid_until = 0.0
        return bool(kept)

    async def release(self) -> None:
        self._valid_until = 0.0
        await self.redis.eval(RELEASE, 1, self.key, self.token)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))
