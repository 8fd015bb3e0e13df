"""The control channel: subscription changes and sign-outs made on one replica reach every other
process.

The replica that stored a change applies it to its own streams, then announces it here. Every other
replica applies it to the streams it holds for that user; the ingest process recounts the stored
subscriptions and follows them upstream. A change announced while Redis is away is not repeated:
the ingest also recounts on every (re)subscription, and periodically.
"""

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cryptomarket.deribit.backoff import Backoff
from cryptomarket.distributed.connect import cancel_for_sure, raise_if_cancelled
from cryptomarket.distributed.outages import OutageLog

logger = logging.getLogger("cryptomarket.distributed.control")

CONTROL_CHANNEL = "cryptomarket:control"
ANNOUNCE_RETRIES = 8  # a failed announcement is tried again this often, with backoff


@dataclass(frozen=True)
class SubscriptionChange:
    user_id: str
    ticker: str
    timer: int | None  # the subscription's own timer (None: the stream's default)
    removed: bool
    origin: str = ""  # the announcing process, which has applied the change already


@dataclass(frozen=True)
class SessionEnded:
    """A session was signed out: its streams end on every replica. The session travels as the
    hash the store keeps, never as the token."""

    user_id: str
    session: str
    origin: str = ""


Message = SubscriptionChange | SessionEnded
SESSION_ENDED = "session_ended"


def encode(message: Message) -> bytes:
    raw = asdict(message)
    if isinstance(message, SessionEnded):
        raw["kind"] = SESSION_ENDED
    return json.dumps(raw).encode()


def decode(data: bytes) -> Message:
    """A message from the channel; ValueError when it is not one."""
    try:
        raw: dict[str, Any] = json.loads(data)
        if raw.get("kind") == SESSION_ENDED:
            return SessionEnded(
                user_id=str(raw["user_id"]),
                session=str(raw["session"]),
                origin=str(raw.get("origin", "")),
            )
        timer = raw["timer"]
        change = SubscriptionChange(
            user_id=str(raw["user_id"]),
            ticker=str(raw["ticker"]),
            timer=None if timer is None else int(timer),
            removed=bool(raw["removed"]),
            origin=str(raw.get("origin", "")),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"not a subscription change: {error}") from None
    return change


OnChange = Callable[[SubscriptionChange], Awaitable[None]]
OnSubscribed = Callable[[], Awaitable[None]]


class MissedUnknown(Exception):
    """The changes announced while the channel was away could not be recounted."""


OnSessionEnded = Callable[[SessionEnded], None]


class ControlChannel:
    def __init__(
        self,
        redis: Redis,
        outages: OutageLog,
        *,
        backoff: Callable[[], Backoff] = lambda: Backoff(initial=0.1, maximum=5.0),
    ) -> None:
        self.redis = redis
        self.outages = outages
        self.origin = uuid.uuid4().hex
        self._backoff = backoff
        self._task: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()  # announcements tried again
        self.listening = False
        self.on_session_ended: OnSessionEnded | None = None  # replicas end those streams
        self.on_listening: Callable[[], None] | None = None  # after each (re)subscription

    async def announce(self, change: SubscriptionChange) -> None:
        """Tell every other process (the change is stored already)."""
        stamped = SubscriptionChange(
            change.user_id, change.ticker, change.timer, change.removed, self.origin
        )
        await self._announce(encode(stamped), f"a subscription change of {change.user_id}")

    async def announce_session_ended(self, user_id: str, session: str) -> None:
        """Tell the other replicas a session ended (the store knows it already)."""
        message = encode(SessionEnded(user_id, session, self.origin))
        await self._announce(message, "the end of a session")

    async def _announce(self, message: bytes, what: str) -> None:
        """Publish now; a failure is logged and tried again a few times in the background: the
        others' subscriptions may be fine (only this process's Redis client failed), so no
        resync of theirs would ever make up for it."""
        try:
            await self.redis.publish(CONTROL_CHANNEL, message)
        except (RedisError, OSError) as error:
            self.outages.failed(error)
            logger.warning("could not announce %s, trying again: %s", what, type(error).__name__)
            retry = asyncio.create_task(self._announce_again(message, what))
            self._retries.add(retry)
            retry.add_done_callback(self._retries.discard)

    async def _announce_again(self, message: bytes, what: str) -> None:
        backoff = self._backoff()
        for _ in range(ANNOUNCE_RETRIES):
            await asyncio.sleep(backoff.next_delay())
            try:
                await self.redis.publish(CONTROL_CHANNEL, message)
            except (RedisError, OSError) as error:
                self.outages.failed(error)
                continue
            logger.info("announced %s at a later try", what)
            return
        logger.warning("gave up announcing %s", what)

    def listen(self, on_change: OnChange, on_subscribed: OnSubscribed | None = None) -> None:
        """Apply every change announced by another process; `on_subscribed` after each
        (re)subscription, for whoever must recount what it may have missed."""
        if self._task is None:
            self._task = asyncio.create_task(
                self._listen(on_change, on_subscribed), name="control-channel"
            )

    async def stop(self) -> None:
        await cancel_for_sure(list(self._retries))
        if self._task is not None:
            await cancel_for_sure([self._task])
            self._task = None

    async def _listen(self, on_change: OnChange, on_subscribed: OnSubscribed | None) -> None:
        backoff = self._backoff()
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(CONTROL_CHANNEL)
                self.listening = True
                self.outages.succeeded()
                backoff.reset()
                if self.on_listening is not None:
                    self.on_listening()
                if on_subscribed is not None:
                    await self._recount_missed(on_subscribed)
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    raise_if_cancelled()
                    if message is not None and message["type"] == "message":
                        await self._handle(message["data"], on_change)
            except (RedisError, OSError, MissedUnknown) as error:
                raise_if_cancelled()
                if self.listening:
                    logger.warning("lost the control channel, reconnecting: %s", error)
                self.outages.failed(error)
                self.listening = False
                await asyncio.sleep(backoff.next_delay())
            finally:
                self.listening = False
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _recount_missed(self, on_subscribed: OnSubscribed) -> None:
        """What was announced while not listening is recounted from the store; with the store
        away too, the channel is left and subscribed again later, to recount then (else those
        changes would stay missed, and one failure must not end the listening for good)."""
        try:
            await on_subscribed()
        except Exception as error:
            raise_if_cancelled()
            raise MissedUnknown(f"missed changes not recounted: {type(error).__name__}") from None

    async def _handle(self, data: bytes, on_change: OnChange) -> None:
        try:
            change = decode(data)
        except ValueError:
            logger.warning("ignored a malformed message on the control channel")
            return
        if change.origin == self.origin:
            return
        if isinstance(change, SessionEnded):
            if self.on_session_ended is not None:
                self.on_session_ended(change)
            return
        try:
            await on_change(change)
        except Exception:
            logger.exception("applying a subscription change failed")
