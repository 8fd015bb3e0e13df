"""JSON-RPC on one Deribit socket: the requests waiting for answers, and the frames sent.

Deribit answers by id, in any order, and an answer may come after its request gave up waiting;
`PendingRequests` matches each answer to the future still waiting for it, or drops it.
"""

import asyncio
import itertools
import json
from collections.abc import Iterable
from typing import Any

from cryptomarket.deribit.errors import error_from_payload

# Deribit accepts up to this many channels in one subscribe call (reference section 8).
SUBSCRIBE_BATCH = 500


class PendingRequests:
    """Requests sent and not answered yet, by id. Ids are never reused: a late answer to a
    request that timed out cannot settle a newer one."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._futures: dict[int, asyncio.Future[Any]] = {}

    def __len__(self) -> int:
        return len(self._futures)

    def open(self) -> tuple[int, "asyncio.Future[Any]"]:
        """A new request id and the future its answer settles."""
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures[request_id] = future
        return request_id, future

    def close(self, request_id: int) -> None:
        """The request is answered or given up: a later answer to it is dropped."""
        self._futures.pop(request_id, None)

    def answer(self, message: dict[str, Any]) -> bool:
        """Settle the request `message` answers (a Deribit error raises in its waiter); False
        when the message is no answer at all (a notification)."""
        request_id = message.get("id")
        if request_id is None:
            return False
        future = self._futures.get(request_id)
        if future is not None and not future.done():
            if "error" in message:
                future.set_exception(error_from_payload(message["error"]))
            else:
                future.set_result(message.get("result"))
        return True

    def fail_all(self, error: Exception) -> None:
        """No answer can come any more (the socket is gone): every waiter gets `error` now."""
        for future in self._futures.values():
            if not future.done():
                future.set_exception(error)
        self._futures.clear()


def request_frame(request_id: int, method: str, params: dict[str, Any]) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def batches(channels: list[str]) -> Iterable[list[str]]:
    """`channels` in subscribe calls Deribit accepts."""
    for start in range(0, len(channels), SUBSCRIBE_BATCH):
        yield channels[start : start + SUBSCRIBE_BATCH]


def number(value: float) -> int | float:
    """Deribit's integer parameters get integers."""
    return int(value) if float(value).is_integer() else value
