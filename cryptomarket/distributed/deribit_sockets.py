"""Deribit sockets counted across the deployment, in Redis (distributed mode).

Deribit accepts 32 connections per IP address and refuses the 33rd handshake; every API replica,
the ingest leader and each Celery job opens its own. Each process says how many it would like
(its `want`) and holds one ticket per socket; one Lua script, on Redis's clock, hands out
tickets while the deployment holds fewer than `limit` and this process fewer than its share.
Shares are water-filled: a process that wants less than an even split keeps what it wants and
leaves the rest to the others, so a job wanting two sockets never starves an API replica.

A process renews its presence and its tickets every few seconds; a process that dies stops
renewing and its tickets expire, the way its sockets died with it. A renewal also re-adds the
tickets Redis lost (a restart without persistence). When a newcomer shrinks a process's share,
the renewal tells the pool, which gives back idle sockets. While Redis is away a process keeps
to the share it last heard of (one socket if it never heard), so the count stays bounded.
"""

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("cryptomarket.distributed.deribit_sockets")

SOCKETS_KEY = "cryptomarket:deribit:sockets"  # ZSET ticket -> expiry (ms, Redis clock)
PROCESSES_KEY = "cryptomarket:deribit:processes"  # ZSET process -> expiry
WANTS_KEY = "cryptomarket:deribit:wants"  # HASH process -> sockets it would like
# None of the three has a TTL: under `volatile-lru` Redis never evicts them.

TTL = 20.0  # seconds a presence or ticket lives unless renewed
RENEW_EVERY = 3.0

# Shared by the scripts: forget the expired, mark this process present, and compute its share.
# KEYS: sockets, processes, wants. ARGV[1] process, ARGV[2] want, ARGV[3] limit, ARGV[4] ttl ms.
PRELUDE = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local me, want, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local expiry = ms + tonumber(ARGV[4])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ms)) do
  redis.call('HDEL', KEYS[3], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ms)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('ZADD', KEYS[2], expiry, me)
redis.call('HSET', KEYS[3], me, want)
local processes = redis.call('ZRANGE', KEYS[2], 0, -1)
local wants = {}
for i, process in ipairs(processes) do
  wants[i] = tonumber(redis.call('HGET', KEYS[3], process)) or 1
end
table.sort(wants)
local share = want
local left = limit
for i, wanted in ipairs(wants) do
  local even = math.floor(left / (#wants - i + 1))
  if wanted > even then
    share = math.min(want, even)
    break
  end
  left = left - wanted
end
share = math.max(1, share)
local mine = 0
local prefix = me .. '#'
local tickets = redis.call('ZRANGE', KEYS[1], 0, -1)
for _, ticket in ipairs(tickets) do
  if string.sub(ticket, 1, #prefix) == prefix then
    mine = mine + 1
  end
end
"""

# ARGV[5]: the ticket to add. Returns {1 if added else 0, share, processes}.
OPEN = (
    PRELUDE
    + """
if #tickets < limit and mine < share then
  redis.call('ZADD', KEYS[1], expiry, ARGV[5])
  return {1, share, #processes}
end
return {0, share, #processes}
"""
)

# ARGV[5..]: the tickets this process holds; any other ticket of its is dropped.
RENEW = (
    PRELUDE
    + """
local held = {}
for i = 5, #ARGV do
  held[ARGV[i]] = true
  redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
for _, ticket in ipairs(tickets) do
  if string.sub(ticket, 1, #prefix) == prefix and not held[ticket] then
    redis.call('ZREM', KEYS[1], ticket)
  end
end
return {0, share, #processes}
"""
)

LEAVE = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local prefix = ARGV[1] .. '#'
for _, ticket in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(ticket, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[1], ticket)
  end
end
return 0
"""


def process_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class DeploymentSockets:
    """This process's Deribit sockets, within its share of the deployment's `limit`."""

    def __init__(
        self,
        redis: Redis,
        *,
        limit: int,
        want: int,
        ttl: float = TTL,
        renew_every: float = RENEW_EVERY,
    ) -> None:
        self.redis = redis
        self.limit = limit
        self.want = want
        self.name = process_name()
        self.share = 1  # until Redis says otherwise
        self.processes = 1
        self.held: set[str] = set()
        self._ttl_ms = int(ttl * 1000)
        self._renew_every = renew_every
        self._numbers = itertools.count(1)
        self._open = redis.register_script(OPEN)
        self._renew = redis.register_script(RENEW)
        self._leave = redis.register_script(LEAVE)
        self._over: list[Callable[[int], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._reachable = True

    def on_over(self, give_back: Callable[[int], None]) -> None:
        """`give_back(n)` is called when this process holds n sockets more than its share."""
        self._over.append(give_back)

    async def try_open(self) -> str | None:
        """A ticket for one more socket, or None while the deployment has no room for it."""
        self._ensure_renewing()
        ticket = f"{self.name}#{next(self._numbers)}"
        try:
            added, self.share, self.processes = await self._open(
                keys=self._keys, args=[*self._args, ticket]
            )
        except (RedisError, OSError) as error:
            self._unreachable(error)
            added = len(self.held) < self.share  # the last share heard of holds meanwhile
        else:
            self._reachable = True
        if not added:
            return None
        self.held.add(ticket)
        return ticket

    async def closed(self, ticket: str) -> None:
        """The ticket's socket is closed for good; the next renewal drops it if this fails."""
        self.held.discard(ticket)
        with contextlib.suppress(RedisError, OSError):
            await self.redis.zrem(SOCKETS_KEY, ticket)

    async def renew(self) -> None:
        try:
            _, self.share, self.processes = await self._renew(
                keys=self._keys, args=[*self._args, *sorted(self.held)]
            )
        except (RedisError, OSError) as error:
            self._unreachable(error)
            return
        self._reachable = True
        excess = len(self.held) - self.share
        if excess > 0:
            for give_back in self._over:
                give_back(excess)

    async def close(self) -> None:
        """Leave at once, so the others' shares grow without waiting for an expiry."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.held.clear()
        with contextlib.suppress(RedisError, OSError):
            await self._leave(keys=self._keys, args=[self.name])

    @property
    def _keys(self) -> list[str]:
        return [SOCKETS_KEY, PROCESSES_KEY, WANTS_KEY]

    @property
    def _args(self) -> list[str | int]:
        return [self.name, self.want, self.limit, self._ttl_ms]

    def _ensure_renewing(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._renewing(), name="deribit-socket-renewal")

    async def _renewing(self) -> None:
        while True:
            await asyncio.sleep(self._renew_every)  # a lease has no event to await
            await self.renew()

    def _unreachable(self, error: BaseException) -> None:
        if self._reachable:
            logger.warning(
                "Deribit sockets counted in this process (share %d) while Redis is away: %s",
                self.share,
                type(error).__name__,
            )
        self._reachable = False
