"""`public/auth`, `private/logout`, and the token check of every private method (reference §3)."""

import hashlib
import hmac
import logging
from typing import Any

from cryptomarket.deribit.errors import DeribitError, InvalidCredentials
from cryptomarket.deribit.simulator import rpc
from cryptomarket.deribit.simulator.accounts import Account
from cryptomarket.deribit.simulator.state import NO_REPLY, Call, Handler, now_ms
from cryptomarket.deribit.simulator.tokens import SIGNATURE_WINDOW_S, Grant, TooManySessions

log = logging.getLogger("cryptomarket.simulator")

DEFAULT_EXPIRES_IN = 31_536_000  # every documented connection token shows one year


def authenticate(call: Call) -> dict[str, Any]:
    params = call.params
    grant_type = rpc.string(params, "grant_type")
    if grant_type == "refresh_token":
        grant = call.state.tokens.refresh(rpc.string(params, "refresh_token"), call.session.id)
        if grant is None:
            raise rpc.unauthorized()
    else:
        if grant_type == "client_credentials":
            account = _by_secret(call)
        elif grant_type == "client_signature":
            account = _by_signature(call)
        else:
            raise rpc.invalid_params("invalid grant_type", "grant_type")  # reason text UNVERIFIED
        session_name, expires_in, scope = _scope(params, account)
        try:
            grant = call.state.tokens.issue(
                account,
                scope=scope,
                expires_in=expires_in,
                connection_id=call.session.id,
                session_name=session_name,
            )
        except TooManySessions:
            # Deribit documents the cap (16) but not its error: UNVERIFIED choice of code.
            raise DeribitError(
                "error", data={"reason": "max sessions per API key reached", "param": "scope"}
            ) from None
    call.session.grant = grant
    log.info(
        "connection %d: %s authenticated (%s, scope %s)",
        call.session.id,
        grant.account.client_id,
        grant_type,
        grant.scope,
    )
    result = grant.result()
    if isinstance(params.get("state"), str):
        result["state"] = params["state"]
    return result


def _by_secret(call: Call) -> Account:
    client_id = rpc.string(call.params, "client_id")
    secret = rpc.string(call.params, "client_secret")
    account = call.state.accounts.get(client_id)
    if account is None or not hmac.compare_digest(secret, account.client_secret):
        raise InvalidCredentials("invalid_credentials")
    return account


def _by_signature(call: Call) -> Account:
    params = call.params
    client_id = rpc.string(params, "client_id")
    timestamp = rpc.required(params, "timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise rpc.invalid_params("invalid format", "timestamp")
    signature = rpc.string(params, "signature")
    nonce = rpc.string(params, "nonce", default="")
    data = rpc.string(params, "data", default="")
    account = call.state.accounts.get(client_id)
    if account is None:
        raise InvalidCredentials("invalid_credentials")
    # The 13009 reasons below are UNVERIFIED: Deribit documents the rules, not their error data.
    if abs(now_ms() - timestamp) > SIGNATURE_WINDOW_S * 1000:
        raise rpc.unauthorized("invalid timestamp")
    expected = expected_signature(account.client_secret, timestamp, nonce, data)
    if not hmac.compare_digest(expected, signature.lower()):
        raise rpc.unauthorized("invalid signature")
    if not call.state.nonces.use(client_id, nonce, expected):
        raise rpc.unauthorized("nonce already used")
    return account


def expected_signature(secret: str, timestamp: int, nonce: str, data: str) -> str:
    """What Deribit expects (reference section 3.1), written here apart from the client's signer
    so that a mistake in one is not repeated in the other: HMAC-SHA256 keyed by the secret over
    the timestamp, the nonce and the data, each followed by a line feed but the last."""
    lines = [str(timestamp).encode("ascii"), nonce.encode(), data.encode()]
    return hmac.digest(secret.encode(), b"\n".join(lines), hashlib.sha256).hex()


def _scope(params: rpc.Params, account: Account) -> tuple[str | None, int, str]:
    """(session name, lifetime, granted scope) from the requested scope.

    Access scopes (`account:read`, `trade:...`) are accepted and narrowed away, as Deribit may:
    the simulator grants read access only, and says so by not listing them.
    """
    session_name, expires_in = None, DEFAULT_EXPIRES_IN
    granted_expiry = []
    for part in rpc.string(params, "scope", default="").split():
        if part.startswith("session:"):
            session_name = part.removeprefix("session:")
            if not session_name:
                raise rpc.invalid_params("invalid scope", "scope")
        elif part.startswith("expires:"):
            value = part.removeprefix("expires:")
            if not (value.isascii() and value.isdigit()) or int(value) == 0:
                raise rpc.invalid_params("invalid scope", "scope")
            expires_in = int(value)
            granted_expiry = [part]
    granted = [f"session:{session_name}" if session_name else "connection"]
    granted += ["mainaccount"] if account.type == "main" else []
    return session_name, expires_in, " ".join(granted + granted_expiry)


def private_grant(call: Call) -> Grant:
    """The caller's grant: `params.access_token`, else the socket's own auth; else 13009."""
    token = call.params.get("access_token")
    if token is None:
        grant = call.state.socket_grant(call.session)
    elif isinstance(token, str):
        grant = call.state.tokens.by_access(token, call.session.id)
    else:
        grant = None
    if grant is None:
        raise rpc.unauthorized()
    return grant


def logout(call: Call) -> object:
    """No answer; the socket closes gracefully (reference §3.4)."""
    grant = private_grant(call)
    if rpc.boolean(call.params, "invalidate_token", default=True):
        call.state.tokens.revoke_session(grant)
    log.info("connection %d: %s logged out", call.session.id, grant.account.client_id)
    call.session.close(1000, "logout")
    return NO_REPLY


AUTH_METHODS: dict[str, Handler] = {
    "public/auth": authenticate,
    "private/logout": logout,
}
