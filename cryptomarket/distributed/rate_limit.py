"""Token buckets in Redis, shared by every replica (the rate limits of distributed mode).

One Lua script reads, refills and spends every bucket of a request at once, on Redis's clock, so
two replicas racing for the last token cannot both get it and replica clocks do not matter.
While Redis cannot be reached the buckets of this process stand in: limits then hold per
replica, never not at all.
"""

import hashlib
import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cryptomarket.distributed.outages import OutageLog
from cryptomarket.kit.buckets import Bucket, LocalBuckets

logger = logging.getLogger("cryptomarket.distributed.rate_limit")

PREFIX = "cryptomarket:bucket:"
CHARGE = -1.0  # the overdraft of a charge: spend whatever the level

# KEYS: the buckets. ARGV[1]: how many of the first KEYS to spend from; ARGV[2]: how far below
# zero a bucket may go, or -1 to spend whatever the level (a charge; never below -burst);
# ARGV[3]: the tokens to spend; then burst and tokens per second of each bucket. A bucket is a
# hash {level, at}; a missing one is full. Returns "0" or the seconds to wait.
TAKE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
local spend = tonumber(ARGV[1])
local overdraft = tonumber(ARGV[2])
local force = overdraft < 0
local cost = tonumber(ARGV[3])
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local burst = tonumber(ARGV[2 + 2 * i])
  local rate = tonumber(ARGV[3 + 2 * i])
  local state = redis.call('HMGET', key, 'level', 'at')
  local level = tonumber(state[1]) or burst
  local at = tonumber(state[2]) or t
  level = math.min(burst, level + math.max(0, t - at) * rate)
  levels[i] = level
  if not force and level + overdraft < cost then
    wait = math.max(wait, (cost - overdraft - level) / rate)
  end
end
if wait > 0 then
  return tostring(wait)
end
for i = 1, spend do
  local burst = tonumber(ARGV[2 + 2 * i])
  local rate = tonumber(ARGV[3 + 2 * i])
  local level = math.max(levels[i] - cost, -burst)
  redis.call('HSET', KEYS[i], 'level', tostring(level), 'at', tostring(t))
  redis.call('PEXPIRE', KEYS[i], math.ceil((burst - level) / rate * 1000) + 1000)
end
return '0'
"""


def redis_key(key: str) -> str:
    """A bounded key that does not spell out client ids in Redis."""
    kind, _, rest = key.partition(":")
    return f"{PREFIX}{kind}:{hashlib.sha256(rest.encode()).hexdigest()[:32]}"


class RedisBuckets:
    def __init__(self, redis: Redis, outages: OutageLog) -> None:
        self.redis = redis
        self.outages = outages
        self.fallback = LocalBuckets()
        self._script = redis.register_script(TAKE)

    async def take(
        self, spend: Sequence[Bucket], require: Sequence[Bucket], cost: float = 1.0
    ) -> float:
        answer = await self.in_redis([*spend, *require], len(spend), cost=cost)
        if answer is None:
            return await self.fallback.take(spend, require, cost)
        return answer

    async def charge(self, buckets: Sequence[Bucket], cost: float = 1.0) -> None:
        if await self.in_redis(list(buckets), len(buckets), cost=cost, overdraft=CHARGE) is None:
            await self.fallback.charge(buckets, cost)

    async def in_redis(
        self, buckets: list[Bucket], spend: int, *, cost: float, overdraft: float = 0.0
    ) -> float | None:
        """Redis's answer alone (the seconds to wait, 0.0 when taken), or None while it is away.

        Spends from the first `spend` buckets, each of which may go `overdraft` below zero
        (CHARGE: whatever its level).
        """
        keys = [redis_key(key) for key, _rate in buckets]
        args: list[float | int] = [spend, overdraft, cost]
        for _key, rate in buckets:
            args += [rate.burst, rate.per_second]
        try:
            answer = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as error:
            if not self.outages.down:
                logger.warning(
                    "rate limits fall back to this replica: Redis %s", type(error).__name__
                )
            self.outages.failed(error)
            return None
        self.outages.succeeded()
        return float(answer)
