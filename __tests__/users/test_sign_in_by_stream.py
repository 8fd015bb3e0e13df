"""Sign in by stream, as the original service did: the seed's three key headers on the stream
route, for a user id never signed in, verify the key with Deribit once and open the stream."""

import httpx
from sqlalchemy import select

from __tests__.service import KEYS, Service
from __tests__.sse import open_stream
from cryptomarket.core.db import Database

# The original collection's stream request: the key headers, and a placeholder Bearer beside them.
PLACEHOLDER = {"Authorization": "Bearer <token>"}


def seed_headers(user_id: str, key_of: str, secret: str | None = None) -> dict[str, str]:
    client_id, real_secret = KEYS[key_of]
    return {
        **PLACEHOLDER,
        "X-User-id": user_id,
        "X-Client-Id": client_id,
        "X-Secret-key": secret or real_secret,
    }


def code(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["code"])


async def stored_secret(service: Service, user_id: str) -> bytes | None:
    database = Database(service.settings.DATABASE_URL)
    person = database.tables.person
    try:
        async with database.reading() as connection:
            row = (
                await connection.execute(
                    select(person.c.client_secret_encrypted).where(person.c.user_id == user_id)
                )
            ).first()
    finally:
        await database.dispose()
    return None if row is None else bytes(row[0])


async def test_the_seeds_stream_request_signs_in_a_new_user_and_hands_over_a_session(
    service: Service,
) -> None:
    auths = service.simulator.calls["public/auth"]
    async with (
        httpx.AsyncClient(base_url=service.base_url, timeout=10) as anonymous,
        open_stream(anonymous, params={"timer": 0}, headers=seed_headers("carol", "alice")) as s,
    ):
        connected = (await s.until("connected")).data
        assert connected["user_id"] == "carol" and connected["timer"] == 0
        token = connected["token"]
        assert isinstance(token, str) and len(token) >= 32
        assert service.simulator.calls["public/auth"] == auths + 1  # verified with Deribit once
        session = service.client_for(token)
        subscribed = await session.get("/api/v1/market/carol/create_order/btc_usd")
        assert subscribed.status_code == 201, subscribed.text
        price = await s.until("price")  # the stream it opened delivers what the session asks
        assert price.data["ticker"] == "btc_usd"
        profile = (await session.get("/api/v1/users/carol")).json()["profile"]
        assert profile["account_id"] == 1001
        await session.aclose()
    secret = await stored_secret(service, "carol")
    assert secret is not None and KEYS["alice"][1].encode() not in secret  # encrypted at rest
    # Again with the same headers: the stored key matches, so no new Deribit check, no session.
    async with (
        httpx.AsyncClient(base_url=service.base_url, timeout=10) as anonymous,
        open_stream(anonymous, headers=seed_headers("carol", "alice")) as again,
    ):
        assert (await again.until("connected")).data["token"] is None
        assert (await again.until("price")).data["ticker"] == "btc_usd"  # stored subscription
    assert service.simulator.calls["public/auth"] == auths + 1


async def test_a_stream_sign_in_answers_as_the_sign_in_route_does_and_stores_nothing_refused(
    service: Service,
) -> None:
    await service.sign_in("alice")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as anonymous:
        for headers, status, expected in (
            (seed_headers("dave", "alice", secret="wrong"), 401, "invalid_credentials"),
            (seed_headers("alice", "bob"), 409, "user_id_taken"),  # alice is another account's
            (seed_headers("no spaces", "alice"), 422, "invalid_input"),
        ):
            async with open_stream(anonymous, headers=headers) as refused:
                await refused.response.aread()
                assert code(refused.response, status) == expected
        assert await stored_secret(service, "dave") is None
        assert await stored_secret(service, "no spaces") is None
        # The sign-in attempts of the address are the sign-in route's: both spend from them.
        answers = []
        for _ in range(12):
            async with open_stream(anonymous, headers=seed_headers("erin", "bob", "no")) as r:
                await r.response.aread()
                answers.append(r.response.status_code)
        assert 429 in answers
        limited = await anonymous.post(
            "/api/v1/sessions",
            json={"user_id": "erin", "client_id": "sim-bob", "client_secret": "sim-bob-secret"},
        )
        assert code(limited, 429) == "too_many_attempts"


async def test_key_headers_win_over_a_placeholder_bearer_on_every_route(service: Service) -> None:
    await service.sign_in("alice")
    async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as anonymous:
        headers = seed_headers("alice", "alice")
        answer = await anonymous.get("/api/v1/market/alice/create_order/btc_usd", headers=headers)
        assert answer.status_code == 201, answer.text
        assert (await anonymous.get("/api/v1/users/alice", headers=headers)).status_code == 200
        # Off the stream route, key headers that match no stored key are refused, not a sign-in.
        unknown = await anonymous.get("/api/v1/users/frank", headers=seed_headers("frank", "bob"))
        assert code(unknown, 401) == "invalid_credentials"
        assert await stored_secret(service, "frank") is None
        # Without the key headers the placeholder is what it is: an unknown session.
        alone = await anonymous.get("/api/v1/users/alice", headers=PLACEHOLDER)
        assert code(alone, 401) == "invalid_session"
