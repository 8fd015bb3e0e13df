"""The open streams of the process, by user and by Deribit account, within their bounds."""

from cryptomarket.core.errors import TooMany, Unavailable
from cryptomarket.streaming.stream import Stream


class OpenStreams:
    def __init__(
        self, *, max_streams: int, max_per_user: int, max_per_account: int | None = None
    ) -> None:
        self.max_streams = max_streams
        self.max_per_user = max_per_user
        self.max_per_account = max_per_account  # None: no bound per Deribit account
        self._by_user: dict[str, set[Stream]] = {}
        # Deribit account -> its open streams here, across its user ids; only accounts with one.
        self._by_account: dict[int, int] = {}
        self.count = 0  # kept as a count: every open checks it

    def admit(self, user_id: str, account_id: int | None) -> None:
        """Raise if one more stream of the user would pass a bound (nothing is changed)."""
        if self.count >= self.max_streams:
            raise Unavailable(
                f"this server holds its maximum of {self.max_streams} streams; retry shortly",
                code="too_many_streams",
            )
        if len(self._by_user.get(user_id, ())) >= self.max_per_user:
            raise TooMany(
                f"user {user_id!r} already has {self.max_per_user} open streams; close one first",
                code="too_many_streams",
            )
        held = 0 if account_id is None else self._by_account.get(account_id, 0)
        limit = self.max_per_account
        if account_id is not None and limit is not None and held >= limit:
            raise TooMany(
                f"the Deribit account of user {user_id!r} already has {held} open streams "
                "across its user ids, the most allowed per Deribit account "
                f"(SSE_MAX_STREAMS_PER_ACCOUNT={limit}); close one first",
                code="too_many_streams",
            )

    def add(self, stream: Stream) -> None:
        self._by_user.setdefault(stream.user_id, set()).add(stream)
        self.count += 1
        if (account_id := stream.account_id) is not None:
            self._by_account[account_id] = self._by_account.get(account_id, 0) + 1

    def remove(self, stream: Stream) -> bool:
        """Forget the stream; False if it was not here (removed already)."""
        mine = self._by_user.get(stream.user_id)
        if mine is None or stream not in mine:
            return False
        mine.discard(stream)
        self.count -= 1
        if not mine:
            del self._by_user[stream.user_id]
        if (account_id := stream.account_id) is not None:
            held = self._by_account.get(account_id, 0) - 1
            if held > 0:
                self._by_account[account_id] = held
            else:
                del self._by_account[account_id]  # an account with none left is forgotten
        return True

    def __contains__(self, stream: Stream) -> bool:
        return stream in self._by_user.get(stream.user_id, ())

    def __bool__(self) -> bool:
        return self.count > 0

    def all(self) -> list[Stream]:
        return [stream for streams in self._by_user.values() for stream in streams]

    def users(self) -> list[str]:
        return list(self._by_user)

    def of(self, user_id: str) -> frozenset[Stream]:
        return frozenset(self._by_user.get(user_id, ()))

    def per_account(self) -> dict[int, int]:
        return dict(self._by_account)
