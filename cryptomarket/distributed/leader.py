"""A lease in Redis: one holder at a time, kept by renewing it before its TTL runs out.

`SET key token NX PX ttl` takes it; a Lua script renews it only while it still holds our token
(or takes it again if it vanished, as after a Redis restart, when nobody else took it meanwhile);
another releases it only if it is ours. A holder that cannot renew within the TTL must behave as
if it had lost the lease: `valid` turns false at the local deadline.

A lease that expired or was released has no holder left: the last one's local deadline passed
before Redis dropped the key. A lease Redis forgot (a restart without persistence, a flush) may
still have one, sure of it for up to a TTL. So every take also counts an epoch in a key with no
TTL: when that key is missing too, Redis lost its data, and the new holder keeps the lease
without leading for a TTL plus `stand_down` (the time an old holder needs to let go), during
which the old holder's renew fails and it stops. (A fresh Redis looks the same: the first leader
of a deployment waits that long once.)

Redis runs with `noeviction` (docker-compose.yml), so the keys are never evicted; and the three
scripts are flagged `allow-oom`, so even a Redis at its memory limit lets the lease be taken,
renewed and released: the leader, which is what trims the tick stream, can never be locked out by
the memory it is there to free.
"""

import logging
import secrets
import time

from redis.asyncio import Redis

logger = logging.getLogger("cryptomarket.distributed.leader")

# 0: held by another; 1: taken, lead; 2: taken, but Redis forgot who held it; 3: ours already.
ACQUIRE = """#!lua flags=allow-oom
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 3
elseif current then
  return 0
end
local known = redis.call('EXISTS', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('INCR', KEYS[2])
if known == 1 then
  return 1
end
return 2
"""

RENEW = """#!lua flags=allow-oom
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('INCR', KEYS[2])
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
    def __init__(self, redis: Redis, key: str, ttl: float, *, stand_down: float = 1.0) -> None:
        if ttl <= 0:
            raise ValueError("a lease needs a positive TTL")
        self.redis = redis
        self.key = key
        self.epoch_key = f"{key}:epoch"
        self.ttl = ttl
        self.stand_down = stand_down
        self.token = secrets.token_hex(16)
        self._valid_until = 0.0
        self._lead_from: float | None = None  # held, but not to be led before this

    @property
    def valid(self) -> bool:
        """We hold it, as far as we can know: renewed less than a TTL ago."""
        return time.monotonic() < self._valid_until

    @property
    def remaining(self) -> float:
        """Seconds until `valid` turns false unless renewed."""
        return max(0.0, self._valid_until - time.monotonic())

    async def acquire(self) -> bool:
        """Take the lease if nobody holds it; True once it may be led. Call it again while it
        answers False: a lease Redis forgot is held quietly until an old holder has let go."""
        started = time.monotonic()
        keys_and_args = (self.key, self.epoch_key, self.token, str(self._ttl_ms))
        taken = int(await self.redis.eval(ACQUIRE, 2, *keys_and_args))
        if taken == 0:
            self._valid_until, self._lead_from = 0.0, None
            return False
        self._valid_until = started + self.ttl
        if taken == 2 or (taken == 3 and self._lead_from is None):
            self._lead_from = started + self.ttl + self.stand_down
            logger.warning(
                "took a lease Redis had forgotten (restarted or flushed): leading in %.1f s, "
                "once any earlier holder has stood down",
                self.ttl + self.stand_down,
            )
        elif taken == 1:
            self._lead_from = started
        return self._lead_from is not None and started >= self._lead_from

    async def renew(self) -> bool:
        """Extend it; False once someone else holds it."""
        started = time.monotonic()
        keys_and_args = (self.key, self.epoch_key, self.token, str(self._ttl_ms))
        kept = await self.redis.eval(RENEW, 2, *keys_and_args)
        if kept:
            self._valid_until = started + self.ttl
        else:
            self._valid_until, self._lead_from = 0.0, None
        return bool(kept)

    async def release(self) -> None:
        self._valid_until, self._lead_from = 0.0, None
        await self.redis.eval(RELEASE, 1, self.key, self.token)

    @property
    def _ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))
