"""Who is calling: a session token (Bearer header or cookie), or the seed's key headers.

Every `{user_id}` route depends on `require_owner`: no credentials is 401, another user's id is 403.
The SSE route also accepts `?token=`, because a cross-origin EventSource cannot send headers.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request

from cryptomarket.core.errors import Forbidden, InvalidInput, NotAuthenticated
from cryptomarket.runtime import Runtime, RuntimeDep
from cryptomarket.users.schemas import USER_ID_PATTERN

SESSION_COOKIE = "cm_session"


@dataclass(frozen=True)
class Caller:
    user_id: str
    token: str | None  # the session token, when the caller used one


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


async def identify(runtime: Runtime, given: Presented, token: str | None) -> Caller:
    users = runtime.users
    scheme, _, credentials = (given.authorization or "").partition(" ")
    bearer = credentials.strip() if scheme.lower() == "bearer" else None
    for candidate in (bearer, given.session_cookie, token):
        if candidate:
            user_id = await users.user_of_token(candidate)
            if user_id is None:
                raise NotAuthenticated(
                    "the session is unknown, expired or ended; sign in again",
                    code="invalid_session",
                )
            return Caller(user_id, candidate)
    user_id, client_id, secret = given.user_id, given.client_id, given.secret_key
    if user_id or client_id or secret:
        if not (user_id and client_id and secret):
            raise NotAuthenticated("X-User-id, X-Client-Id and X-Secret-key must be sent together")
        if not await users.user_of_key(user_id, client_id, secret):
            raise NotAuthenticated(
                "X-User-id, X-Client-Id and X-Secret-key do not match a signed-in user",
                code="invalid_credentials",
            )
        return Caller(user_id, None)
    raise NotAuthenticated(
        "sign in first: POST /api/v1/sessions, then send the token as a Bearer header or cookie"
    )


async def get_caller(runtime: RuntimeDep, given: PresentedDep) -> Caller:
    return await identify(runtime, given, None)


async def get_stream_caller(
    runtime: RuntimeDep,
    given: PresentedDep,
    token: Annotated[
        str | None,
        Query(max_length=256, description="Session token, for a cross-origin EventSource."),
    ] = None,
) -> Caller:
    return await identify(runtime, given, token)


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
