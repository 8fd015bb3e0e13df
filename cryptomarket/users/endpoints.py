"""Sign in with a Deribit key, sign out, and read your Deribit account data."""

from fastapi import APIRouter, Request, Response, status

from cryptomarket.core.errors import ErrorBody, NotAuthenticated
from cryptomarket.runtime import RuntimeDep
from cryptomarket.users.auth import SESSION_COOKIE, CallerDep, OwnerDep, UserIdPath
from cryptomarket.users.schemas import SessionCreate, SessionCreated, UserOut

router = APIRouter(prefix="/api/v1", tags=["users"])

AUTH_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorBody, "description": "No credentials, or wrong ones."},
    403: {"model": ErrorBody, "description": "Another user's resource."},
}


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


@router.post(
    "/sessions",
    response_model=SessionCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Sign in with a Deribit API key",
    responses={
        401: {"model": ErrorBody, "description": "Deribit refused the key (its reason included)."},
        409: {"model": ErrorBody, "description": "The user_id belongs to another Deribit account."},
        429: {"model": ErrorBody, "description": "Too many sign-in attempts from this client."},
        422: {"model": ErrorBody, "description": "Invalid body."},
        503: {"model": ErrorBody, "description": "Deribit is unreachable."},
    },
)
async def create_session(
    body: SessionCreate, request: Request, response: Response, runtime: RuntimeDep
) -> SessionCreated:
    """Checks the key with Deribit, stores it encrypted, and opens a session.

    The token comes back in the body and as an HttpOnly cookie; send it as
    `Authorization: Bearer <token>`, or let the browser send the cookie.
    """
    client = request.client.host if request.client else "unknown"
    runtime.sign_in_limits.check(f"address:{client}", f"client_id:{body.client_id}")
    created = await runtime.users.sign_in(
        body.user_id, body.client_id, body.client_secret.get_secret_value()
    )
    response.set_cookie(
        SESSION_COOKIE,
        created.token,
        max_age=int(runtime.settings.SESSION_TTL.total_seconds()),
        httponly=True,
        # Strict: the market routes change state on GET (as the seed defined them), so a link
        # on another site must not carry the session along.
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    return created


@router.delete(
    "/sessions/current",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Sign out",
    responses={401: AUTH_ERRORS[401]},
)
async def end_session(caller: CallerDep, response: Response, runtime: RuntimeDep) -> None:
    """Ends the caller's session: its token and cookie stop working at once."""
    if caller.token is None:
        raise NotAuthenticated("only a session can be ended; key headers have none")
    await runtime.users.sign_out(caller.token)
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get(
    "/users/{user_id}",
    response_model=UserOut,
    summary="Your Deribit account data",
    responses={**AUTH_ERRORS, 503: {"model": ErrorBody, "description": "Deribit unreachable."}},
)
async def get_user(user_id: UserIdPath, _owner: OwnerDep, runtime: RuntimeDep) -> UserOut:
    """Account id, username, email, type and balances per currency, cached up to 27 hours."""
    return await runtime.users.user(user_id)
