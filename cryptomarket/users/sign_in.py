"""Signing in, within the attempt limits: the one path `POST /api/v1/sessions` and a stream
opened with the seed's key headers both take."""

import re

from cryptomarket.core.errors import Forbidden, InvalidInput
from cryptomarket.runtime import Runtime
from cryptomarket.users.schemas import MAX_CLIENT_ID, MAX_SECRET, USER_ID_PATTERN, SessionCreated
from cryptomarket.users.service import DeribitRefused


async def sign_in(
    runtime: Runtime, address: str, user_id: str, client_id: str, client_secret: str
) -> SessionCreated:
    """Spend one attempt of the address, check the key with Deribit and open a session; a
    refused secret also spends from this key's refusals at the address."""
    await runtime.sign_in_limits.admit(address, client_id)
    try:
        return await runtime.users.sign_in(user_id, client_id, client_secret)
    except (DeribitRefused, Forbidden):
        await runtime.sign_in_limits.refused(address, client_id)
        raise


def check_key_headers(user_id: str, client_id: str, client_secret: str) -> None:
    """The key headers of a sign-in by stream, held to the sign-in body's rules (422)."""
    if not re.fullmatch(USER_ID_PATTERN, user_id):
        raise InvalidInput("X-User-id: 1 to 64 letters, digits or _ . @ -")
    if len(client_id) > MAX_CLIENT_ID:
        raise InvalidInput(f"X-Client-Id: must be at most {MAX_CLIENT_ID} characters")
    if len(client_secret) > MAX_SECRET:
        raise InvalidInput(f"X-Secret-key: must be at most {MAX_SECRET} characters")
