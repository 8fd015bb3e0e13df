"""Who is calling: a session token (Bearer header or cookie), or the seed's key headers.

Every `{user_id}` route depends on `require_owner`: no credentials is 401, another user's id is 403.
The SSE route also accepts `?token=`, because a cross-origin EventSource cannot send headers.
"""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request

from cryptomarket.core.errors import Forbidden, NotAuthenticated
from cryptomarket.runtime import RuntimeDep
from cryptomarket.users.schemas import USER_ID_PATTERN

SESSION_COOKIE = "cm_session"


@dataclass(frozen=True)
class Caller:
    user_id: str
    token: str | None  # the session token, when the caller used one


async def _caller(
    request: Request,
    runtime: RuntimeDep,
    *,
    token: str | None,
    authorization: str | None,
    user_header: str | None,
    client_header: str | None,
    secret_header: str | None,
) -> Caller:
    users = runtime.users
    scheme, _, credentials = (authorization or "").partition(" ")
    candidates = [
        credentials.strip() if scheme.lower() == "bearer" else None,
        request.cookies.get(SESSION_COOKIE),
        token,
    ]
    for candidate in candidates:
        if candidate:
            user_id = await users.user_of_token(candidate)
            if user_id is None:
                raise NotAuthenticated(
                    "the session is unknown, expired or ended; sign in again",
                    code="invalid_session",
                )
            return Caller(user_id, candidate)
    if user_header or client_header or secret_header:
        if not (user_header and client_header and secret_header):
            raise NotAuthenticated("X-User-id, X-Client-Id and X-Secret-key must be sent together")
        if not await users.user_of_key(user_header, client_header, secret_header):
            raise NotAuthenticated(
                "X-User-id, X-Client-Id and X-Secret-key do not match a signed-in user",
                code="invalid_credentials",
            )
        return Caller(user_header, None)
    raise NotAuthenticated(
        "sign in first: POST /api/v1/sessions, then send the token as a Bearer header or cookie"
    )


HeaderValue = Annotated[str | None, Header(max_length=512, include_in_schema=False)]


async def get_caller(
    request: Request,
    runtime: RuntimeDep,
    *,
    authorization: Annotated[str | None, Header(max_length=512)] = None,
    x_user_id: HeaderValue = None,
    x_client_id: HeaderValue = None,
    x_secret_key: HeaderValue = None,
) -> Caller:
    return await _caller(
        request,
        runtime,
        token=None,
        authorization=authorization,
        user_header=x_user_id,
        client_header=x_client_id,
        secret_header=x_secret_key,
    )


async def get_stream_caller(
    request: Request,
    runtime: RuntimeDep,
    *,
    token: Annotated[
        str | None,
        Query(max_length=256, description="Session token, for a cross-origin EventSource."),
    ] = None,
    authorization: Annotated[str | None, Header(max_length=512)] = None,
    x_user_id: HeaderValue = None,
    x_client_id: HeaderValue = None,
    x_secret_key: HeaderValue = None,
) -> Caller:
    return await _caller(
        request,
        runtime,
        token=token,
        authorization=authorization,
        user_header=x_user_id,
        client_header=x_client_id,
        secret_header=x_secret_key,
    )


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
