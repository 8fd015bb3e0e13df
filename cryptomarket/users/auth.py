"""Who is calling: a session token (Bearer header or cookie), or the seed's key headers.

Every `{user_id}` route depends on `require_owner`: no credentials is 401, another user's id is 403.
The SSE route also accepts `?token=`, because a cross-origin EventSource cannot send headers, and
on it key headers that match no stored key sign in (the seed's clients sign in that way).
Open streams are checked again later (`ended_streams`, run by the hub's session re-check).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request
from sqlalchemy import select

from cryptomarket.core.db import Database
from cryptomarket.core.errors import Forbidden, InvalidInput, NotAuthenticated
from cryptomarket.runtime import Runtime, RuntimeDep
from cryptomarket.streaming.sessions import EXPIRED, KEY_CHANGED, SIGNED_OUT
from cryptomarket.streaming.stream import Stream
from cryptomarket.users.schemas import USER_ID_PATTERN
from cryptomarket.users.service import token_hash
from cryptomarket.users.sign_in import check_key_headers, sign_in

SESSION_COOKIE = "cm_session"


@dataclass(frozen=True)
class Caller:
    user_id: str
    token: str | None  # the session token, when the caller used one
    client_id: str | None = None  # the key headers' client id, when the caller used them
    # The Deribit account owning the user id (None: stored before accounts were): streams are
    # limited per account too, since one account may claim several user ids.
    account_id: int | None = None
    new: bool = False  # signed in by this request (a stream opened with unknown key headers)


MAX_HEADER = 512
HeaderValue = Annotated[str | None, Header(max_length=MAX_HEADER, include_in_schema=False)]


@dataclass(frozen=True)
class Presented:
    """The credentials a request carries in headers and cookies."""

    authorization: str | None
    session_cookie: str | None
    user_id: str | None
    client_id: str | None
    secret_key: str | None


def presented(
    request: Request,
    authorization: Annotated[str | None, Header(max_length=MAX_HEADER)] = None,
    x_user_id: HeaderValue = None,
    x_client_id: HeaderValue = None,
    x_secret_key: HeaderValue = None,
) -> Presented:
    return Presented(
        authorization, request.cookies.get(SESSION_COOKIE), x_user_id, x_client_id, x_secret_key
    )


PresentedDep = Annotated[Presented, Depends(presented)]


CREDENTIAL_HEADERS = ("Authorization", "X-User-id", "X-Client-Id", "X-Secret-key")


def presented_by(request: Request) -> Presented:
    """The same as the `presented` dependency, for a route served without FastAPI's."""
    values: list[str | None] = []
    for name in CREDENTIAL_HEADERS:
        value = request.headers.get(name)
        if value is not None and len(value) > MAX_HEADER:
            raise InvalidInput(f"{name}: must be at most {MAX_HEADER} characters")
        values.append(value)
    authorization, user_id, client_id, secret_key = values
    return Presented(
        authorization, request.cookies.get(SESSION_COOKIE), user_id, client_id, secret_key
    )


async def identify(
    runtime: Runtime, given: Presented, token: str | None, *, sign_in_from: str | None = None
) -> Caller:
    """The caller, from the seed's three key headers when all are sent (they win over anything
    else the request carries: the seed's clients also send a placeholder Bearer), else from a
    session. With `sign_in_from` (a client address: the stream route), key headers that do not
    match a stored key sign in, as POST /api/v1/sessions does."""
    user_id, client_id, secret = given.user_id, given.client_id, given.secret_key
    if user_id and client_id and secret:
        owner = await runtime.users.user_of_key(user_id, client_id, secret)
        if owner is not None:
            return Caller(user_id, None, client_id, owner.account_id)
        if sign_in_from is None:
            raise NotAuthenticated(
                "X-User-id, X-Client-Id and X-Secret-key do not match a signed-in user",
                code="invalid_credentials",
            )
        check_key_headers(user_id, client_id, secret)
        created = await sign_in(runtime, sign_in_from, user_id, client_id, secret)
        return Caller(user_id, created.token, account_id=created.profile.account_id, new=True)
    scheme, _, credentials = (given.authorization or "").partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else None
    for candidate in (bearer, given.session_cookie, token):
        if candidate:
            session_owner = await runtime.users.user_of_token(candidate)
            if session_owner is None:
                raise NotAuthenticated(
                    "the session is unknown, expired or ended; sign in again",
                    code="invalid_session",
                )
            return Caller(session_owner.user_id, candidate, account_id=session_owner.account_id)
    if user_id or client_id or secret:
        raise NotAuthenticated("X-User-id, X-Client-Id and X-Secret-key must be sent together")
    raise NotAuthenticated(
        "sign in first: POST /api/v1/sessions, then send the token as a Bearer header or cookie"
    )


async def get_caller(runtime: RuntimeDep, given: PresentedDep) -> Caller:
    return await identify(runtime, given, None)


async def get_stream_caller(
    request: Request,
    runtime: RuntimeDep,
    given: PresentedDep,
    token: Annotated[
        str | None,
        Query(max_length=256, description="Session token, for a cross-origin EventSource."),
    ] = None,
) -> Caller:
    address = request.client.host if request.client else "unknown"
    return await identify(runtime, given, token, sign_in_from=address)


CallerDep = Annotated[Caller, Depends(get_caller)]
StreamCallerDep = Annotated[Caller, Depends(get_stream_caller)]

UserIdPath = Annotated[
    str, Path(pattern=USER_ID_PATTERN, description="Your user id.", examples=["alice"])
]


async def require_owner(user_id: UserIdPath, caller: CallerDep) -> Caller:
    if caller.user_id != user_id:
        raise Forbidden(f"this session belongs to another user than {user_id!r}")
    return caller


OwnerDep = Annotated[Caller, Depends(require_owner)]


CHECK_BATCH = 500  # ids per query of a re-check


async def ended_streams(database: Database, streams: Sequence[Stream]) -> dict[Stream, str]:
    """The open streams whose session expired or was signed out, or whose key headers no
    longer match the stored key's client id (or whose user is gone), with why: a few queries
    of at most CHECK_BATCH ids for all of them."""
    by_session: dict[str, list[Stream]] = {}
    by_user: dict[str, list[Stream]] = {}
    for stream in streams:
        if stream.token is not None:
            by_session.setdefault(token_hash(stream.token), []).append(stream)
        elif stream.key_id is not None:
            by_user.setdefault(stream.user_id, []).append(stream)
    now = datetime.now(UTC)
    ended: dict[Stream, str] = {}
    sessions, person = database.tables.sessions, database.tables.person
    async with database.reading() as connection:
        live: dict[str, str | None] = {}  # session -> why it ended (None: it goes on)
        for batch in _batches(list(by_session)):
            rows = await connection.execute(
                select(sessions.c.token_hash, sessions.c.expires_at, sessions.c.revoked_at).where(
                    sessions.c.token_hash.in_(batch)
                )
            )
            for row in rows:
                expires_at = _aware(row.expires_at)
                why = SIGNED_OUT if row.revoked_at is not None else None
                live[row.token_hash] = why or (EXPIRED if expires_at <= now else None)
        for session, opened in by_session.items():
            why = live.get(session, EXPIRED)  # gone: purged once it expired or was signed out
            if why is not None:
                ended.update((stream, why) for stream in opened)
        keys: dict[str, str] = {}
        for batch in _batches(list(by_user)):
            rows = await connection.execute(
                select(person.c.user_id, person.c.client_id).where(person.c.user_id.in_(batch))
            )
            keys.update((row.user_id, row.client_id) for row in rows)
        for user_id, opened in by_user.items():
            ended.update(
                (stream, KEY_CHANGED) for stream in opened if keys.get(user_id) != stream.key_id
            )
    return ended


def _batches(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), CHECK_BATCH):
        yield ids[start : start + CHECK_BATCH]


def _aware(moment: datetime) -> datetime:
    """SQLite hands stored UTC moments back without their zone."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
