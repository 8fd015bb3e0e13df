"""The index names Deribit supports, fetched with `public/get_index_price_names` and cached."""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from cryptomarket.deribit.errors import DeribitError, DeribitTransportError

logger = logging.getLogger("cryptomarket.prices.tickers")

TICKERS_URL = "/api/v1/tickers"


class CatalogueUnavailable(Exception):
    """Deribit could not be asked and nothing is cached yet."""


def parse_index_names(result: Any) -> list[str]:
    """Deribit has answered both plain strings and `{"name": ...}` objects over the years."""
    names = []
    for item in result or []:
        name = item.get("name") if isinstance(item, dict) else item
        if isinstance(name, str) and name:
            names.append(name)
    return sorted(set(names))


class TickerCatalogue:
    def __init__(
        self,
        call: Callable[..., Awaitable[Any]],
        *,
        ttl: float = 3600.0,
        retry_after: float = 30.0,
    ) -> None:
        self._call = call
        self.ttl = ttl
        self.retry_after = retry_after
        self._names: frozenset[str] = frozenset()
        self._fetched_at = 0.0
        self._failed_at = -float("inf")
        self._lock = asyncio.Lock()

    @property
    def fetched_at(self) -> float | None:
        """Wall-clock time of the cached list, if any."""
        return self._fetched_at or None

    async def names(self) -> list[str]:
        """The cached list, refreshed when older than `ttl`; a stale list beats none."""
        if self._fresh():
            return sorted(self._names)
        async with self._lock:
            if not self._fresh() and time.monotonic() - self._failed_at > self.retry_after:
                await self._refresh()
        if not self._names:
            raise CatalogueUnavailable("Deribit's list of index names could not be fetched")
        return sorted(self._names)

    async def contains(self, ticker: str) -> bool:
        return ticker in await self.names()

    def _fresh(self) -> bool:
        return bool(self._names) and time.time() - self._fetched_at < self.ttl

    async def _refresh(self) -> None:
        try:
            names = parse_index_names(await self._call("public/get_index_price_names", {}))
        except (DeribitError, DeribitTransportError) as error:
            self._failed_at = time.monotonic()
            logger.warning("index names unavailable: %s", error)
            return
        if names:
            self._names = frozenset(names)
            self._fetched_at = time.time()
