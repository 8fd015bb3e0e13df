"""Sign in with a Deribit key, sign out, and read your Deribit account data."""

from fastapi import APIRouter, Request, Response, status

from cryptomarket.core.errors import NotAuthenticated
from cryptomarket.core.openapi_docs import DERIBIT_DOWN, INVALID, OWNER_ERRORS, UNAUTHORIZED, error
from cryptomarket.runtime import RuntimeDep
from cryptomarket.users.auth import SESSION_COOKIE, CallerDep, OwnerDep, UserIdPath
from cryptomarket.users.schemas import SessionCreate, SessionCreated, UserOut
from cryptomarket.users.sign_in import sign_in

router = APIRouter(prefix="/api/v1", tags=["users"])


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


@router.post(
    "/sessions",
    response_model=SessionCreated,
    status_code=status.HTTP_201_CREATED,
    summary="Sign in with a Deribit API key",
    responses={
        401: error(
            "Deribit refused the key; its reason is in the sentence.",
            "invalid_credentials",
            "Deribit refused the key: invalid_credentials",
        ),
        409: error(
            "The user_id belongs to another Deribit account.",
            "user_id_taken",
            "user_id 'alice' belongs to another Deribit account; choose another id",
        ),
        422: INVALID,
        429: error(
            "Too many sign-in attempts from this address (or refused secrets for this "
            "client_id from it); the Deribit account has MAX_USER_IDS_PER_ACCOUNT user ids "
            "(code `too_many_user_ids`); or Deribit refused the login for now (code "
            "`login_over_limit`, Deribit's 12003).",
            "too_many_attempts",
            "too many sign-in attempts; try again in 12 s",
        ),
        503: DERIBIT_DOWN,
    },
)
async def create_session(
    body: SessionCreate, request: Request, response: Response, runtime: RuntimeDep
) -> SessionCreated:
    """Checks the key with Deribit (once: a refused key is not retried), stores it encrypted,
    and opens a session for `user_id`.

    The token comes back in the body and as the HttpOnly cookie `cm_session`; send it as
    `Authorization: Bearer <token>`, or let the browser send the cookie. A `user_id` belongs to
    the Deribit account that first signed in with it: another account's key gets 409.
    """
    address = request.client.host if request.client else "unknown"
    secret = body.client_secret.get_secret_value()
    created = await sign_in(runtime, address, body.user_id, body.client_id, secret)
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
    responses={401: UNAUTHORIZED, 422: INVALID},
)
async def end_session(caller: CallerDep, response: Response, runtime: RuntimeDep) -> None:
    """Ends the caller's session: its token and cookie stop working at once (204, no body).

    Streams opened with the session end too, on every replica. Only a session can be ended: a
    request made with the key headers gets 401.
    """
    if caller.token is None:
        raise NotAuthenticated("only a session can be ended; key headers have none")
    await runtime.users.sign_out(caller.token)
    # Its open streams end too (on every replica), not only new requests.
    await runtime.end_session_streams(caller.user_id, caller.token)
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get(
    "/users/{user_id}",
    response_model=UserOut,
    summary="Your Deribit account data",
    responses={**OWNER_ERRORS, 503: DERIBIT_DOWN},
)
async def get_user(user_id: UserIdPath, _owner: OwnerDep, runtime: RuntimeDep) -> UserOut:
    """Account id, username, email, type and balances per currency of the Deribit account
    behind the user's key. Kept up to 27 hours, refreshed in the background as it ages; fetched
    from Deribit at once when older (then 503 if Deribit cannot be reached).
    """
    return await runtime.users.user(user_id)
