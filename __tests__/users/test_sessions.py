"""Signing in, sessions, the authorization rules of every {user_id} route, and secrets at rest."""

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from __tests__.helpers import eventually, eventually_async
from __tests__.service import KEYS, Service, running_service
from __tests__.simulated import sim_control
from __tests__.sse import open_stream
from cryptomarket.core.logging import configure_logging
from cryptomarket.deribit.simulator import Simulator

ALICE_SECRET = "sim-alice-secret"
USER_ROUTES = [
    ("GET", "/api/v1/users/{user}"),
    ("GET", "/api/v1/market/{user}/create_order/btc_usd"),
    ("POST", "/api/v1/market/{user}/create_order/btc_usd"),
    ("GET", "/api/v1/market/{user}/cancel_order/btc_usd"),
    ("POST", "/api/v1/market/{user}/cancel_order/btc_usd"),
    ("GET", "/api/v1/market/{user}/cancel_all_orders"),
    ("POST", "/api/v1/market/{user}/cancel_all_orders"),
    ("GET", "/api/v1/market/{user}/get_order/btc_usd?start_date=2024-01-01"),
    ("POST", "/api/v1/market/{user}/get_order/btc_usd?start_date=2024-01-01"),
]


def error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "code"} and body["code"] == code, body
    return str(body["detail"])


async def test_sign_in_returns_a_session_and_the_profile(service: Service) -> None:
    response = await service.client.post(
        "/api/v1/sessions",
        json={"user_id": "alice", "client_id": "sim-alice", "client_secret": ALICE_SECRET},
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"user_id", "token", "expires_at", "profile"}
    assert body["profile"]["account_id"] == 1001
    assert body["profile"]["username"] == "alice"
    assert body["profile"]["email"] == "alice@example.com"
    assert "BTC" in body["profile"]["balances"]
    cookie = response.headers["set-cookie"]
    assert f"cm_session={body['token']}" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    user = await service.client.get("/api/v1/users/alice")  # the cookie is enough
    assert user.status_code == 200
    assert user.json()["profile"]["account_id"] == 1001


async def test_wrong_secret_is_401_with_deribits_reason_and_one_auth(service: Service) -> None:
    before = service.simulator.calls["public/auth"]
    response = await service.client.post(
        "/api/v1/sessions",
        json={"user_id": "alice", "client_id": "sim-alice", "client_secret": "wrong"},
    )
    assert "invalid_credentials" in error(response, 401, "invalid_credentials")
    assert service.simulator.calls["public/auth"] == before + 1


async def test_a_user_id_stays_with_its_deribit_account(service: Service) -> None:
    await service.sign_in("alice")
    response = await service.client.post(
        "/api/v1/sessions",
        json={"user_id": "alice", "client_id": "sim-bob", "client_secret": "sim-bob-secret"},
    )
    error(response, 409, "user_id_taken")
    await service.sign_in("alice")  # the owner may sign in again


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"user_id": "a b", "client_id": "x", "client_secret": "y"},
        {"user_id": "alice", "client_id": "", "client_secret": "y"},
        {"user_id": "alice", "client_id": "x", "client_secret": "y", "extra": 1},
        {"user_id": "x" * 65, "client_id": "x", "client_secret": "y"},
    ],
)
async def test_malformed_sign_in_is_422(service: Service, body: dict[str, object]) -> None:
    error(await service.client.post("/api/v1/sessions", json=body), 422, "invalid_input")


async def test_unreachable_deribit_is_503(simulator: Simulator, sqlite_url: str) -> None:
    async with running_service(simulator, sqlite_url, DERIBIT_REQUEST_TIMEOUT=1) as service:
        await simulator.stop()
        response = await service.client.post(
            "/api/v1/sessions",
            json={"user_id": "alice", "client_id": "sim-alice", "client_secret": ALICE_SECRET},
        )
        error(response, 503, "deribit_unreachable")


@pytest.mark.parametrize(
    ("code", "status", "answer"),
    [(12003, 429, "login_over_limit"), (13028, 503, "deribit_refused")],
)
async def test_a_refused_auth_is_answered_once_and_clearly(
    service: Service, code: int, status: int, answer: str
) -> None:
    """A transient refusal of public/auth (12003 login_over_limit, 13028) is not retried under
    backoff until the sign-in times out as a 503 'unreachable': it is answered at once."""
    simulator = service.simulator
    await sim_control(
        simulator, ("sim/fail_requests", {"code": code, "seconds": 60, "methods": ["public/auth"]})
    )
    before = simulator.calls["public/auth"]
    started = asyncio.get_running_loop().time()
    response = await service.client.post(
        "/api/v1/sessions",
        json={"user_id": "alice", "client_id": "sim-alice", "client_secret": ALICE_SECRET},
    )
    detail = error(response, status, answer)
    assert str(code) in detail
    assert simulator.calls["public/auth"] == before + 1
    assert asyncio.get_running_loop().time() - started < service.settings.DERIBIT_REQUEST_TIMEOUT

    await sim_control(simulator, ("sim/fail_requests", {"code": code, "seconds": 0}))
    await service.sign_in("alice")  # nothing of the refusal stays behind


async def test_every_user_route_needs_the_owners_credentials(service: Service) -> None:
    alice_token = await service.sign_in("alice")
    bob_token = await service.sign_in("bob")
    anonymous = httpx.AsyncClient(base_url=service.base_url)
    as_alice = service.client_for(alice_token)
    as_bob = service.client_for(bob_token)
    seed_headers = {"X-User-id": "alice", "X-Client-Id": "sim-alice", "X-Secret-key": ALICE_SECRET}
    bad_seed = {**seed_headers, "X-Secret-key": "nope"}
    for method, template in USER_ROUTES:
        path = template.format(user="alice")
        error(await anonymous.request(method, path), 401, "unauthorized")
        error(await as_bob.request(method, path), 403, "forbidden")
        error(await anonymous.request(method, path, headers=bad_seed), 401, "invalid_credentials")
        bad_token = {"Authorization": "Bearer not-a-session"}
        error(await anonymous.request(method, path, headers=bad_token), 401, "invalid_session")
        for allowed in (
            await as_alice.request(method, path),
            await anonymous.request(method, path, headers=seed_headers),
        ):
            # Let through: the route's own answer (cancelling twice is a 404 of its own).
            assert allowed.status_code in (200, 201, 404), (method, path, allowed.text)
            assert allowed.json().get("code") in (None, "not_subscribed"), allowed.text
    for client in (anonymous, as_alice, as_bob):
        await client.aclose()


async def test_the_stream_accepts_every_credential_and_refuses_others(service: Service) -> None:
    token = await service.sign_in("alice")
    anonymous = httpx.AsyncClient(base_url=service.base_url)
    async with open_stream(anonymous) as refused:
        assert refused.response.status_code == 401
    async with open_stream(anonymous, params={"token": token}) as by_query:
        assert (await by_query.until("connected")).data["user_id"] == "alice"
    seed = {"X-User-id": "alice", "X-Client-Id": "sim-alice", "X-Secret-key": ALICE_SECRET}
    async with open_stream(anonymous, headers=seed) as by_headers:
        assert (await by_headers.until("connected")).data["user_id"] == "alice"
    async with open_stream(service.client) as by_cookie:  # signed in above: the cookie
        assert (await by_cookie.until("connected")).data["user_id"] == "alice"
    await anonymous.aclose()


async def test_signing_out_ends_the_session_at_once(service: Service) -> None:
    token = await service.sign_in("alice")
    client = service.client_for(token)
    assert (await client.get("/api/v1/users/alice")).status_code == 200
    assert (await client.delete("/api/v1/sessions/current")).status_code == 204
    error(await client.get("/api/v1/users/alice"), 401, "invalid_session")
    await client.aclose()


async def test_signing_out_ends_the_sessions_open_streams(service: Service) -> None:
    token = await service.sign_in("alice")
    other = await service.sign_in("alice")  # a second session of the same user stays open
    client, keeps = service.client_for(token), service.client_for(other)
    async with open_stream(client) as ended, open_stream(keeps) as kept:
        await ended.until("connected")
        await kept.until("connected")
        assert (await client.delete("/api/v1/sessions/current")).status_code == 204
        with pytest.raises(EOFError):  # the server ended it: a clean end of the response
            await ended.until("price", timeout=5)
        assert kept.response.status_code == 200
        await kept.until("status")  # still delivering: the upstream status follows connected
        assert len(service.runtime.hub.streams_of("alice")) == 1
    async with open_stream(client) as again:
        assert again.response.status_code == 401
    await client.aclose()
    await keeps.aclose()


async def test_an_expired_session_no_longer_works(simulator: Simulator, sqlite_url: str) -> None:
    async with running_service(simulator, sqlite_url, SESSION_TTL=1) as service:
        token = await service.sign_in("alice")
        client = service.client_for(token)
        assert (await client.get("/api/v1/users/alice")).status_code == 200
        await asyncio.sleep(1.1)  # the expiry is a wall-clock fact: nothing to await but time
        error(await client.get("/api/v1/users/alice"), 401, "invalid_session")
        await client.aclose()


async def test_the_secret_is_nowhere_but_in_the_request(
    service: Service, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("DEBUG")  # what the process prints, at its most talkative
    root = logging.getLogger()
    ours = root.handlers[-1]
    try:
        await _secret_nowhere(service, sqlite_url, capsys)
    finally:
        root.removeHandler(ours)  # it writes to this test's captured stdout, closed after


async def _secret_nowhere(
    service: Service, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await service.sign_in("alice")
    seed = {"X-User-id": "alice", "X-Client-Id": "sim-alice", "X-Secret-key": ALICE_SECRET}
    client = service.client_for(token)
    responses = [
        await client.get("/api/v1/users/alice"),
        await client.get("/api/v1/market/alice/create_order/btc_usd", headers=seed),
        await service.client.post(
            "/api/v1/sessions",
            json={"user_id": "alice", "client_id": "sim-alice", "client_secret": ALICE_SECRET},
        ),
    ]
    for response in responses:
        assert ALICE_SECRET not in response.text
    database_file = Path(sqlite_url.removeprefix("sqlite:///"))
    stored = b"".join(
        path.read_bytes() for path in database_file.parent.glob(database_file.name + "*")
    )
    assert ALICE_SECRET.encode() not in stored
    assert token.encode() not in stored  # sessions are kept as hashes
    logged = capsys.readouterr().out
    assert "POST /api/v1/sessions" in logged  # the requests were logged ...
    assert ALICE_SECRET not in logged  # ... without the secret
    assert token not in logged
    await client.aclose()


async def age_the_profile(service: Service) -> datetime:
    """Make the signed-in user's stored profile two hours old (past the background refresh's
    age, within what may be served); returns the fetch time it now says."""
    database = service.runtime.database
    person = database.tables.person
    old = datetime.now(UTC) - timedelta(hours=2)
    async with database.transaction() as connection:
        row = (await connection.execute(select(person.c.profile))).scalar_one()
        aged = {**row, "fetched_at": old.isoformat()}
        await connection.execute(update(person).values(profile=aged, profile_fetched_at=old))
    return old


async def test_an_aging_profile_is_refreshed_in_the_background(service: Service) -> None:
    token = await service.sign_in("alice")
    old = await age_the_profile(service)
    client = service.client_for(token)
    calls = service.simulator.calls["private/get_account_summaries"]
    stale = (await client.get("/api/v1/users/alice")).json()
    assert stale["profile"]["fetched_at"].startswith(old.isoformat()[:19])  # served at once

    async def refreshed() -> bool:
        fresh = (await client.get("/api/v1/users/alice")).json()["profile"]["fetched_at"]
        return not fresh.startswith(old.isoformat()[:19])

    await eventually_async(refreshed, what="the profile refreshed from Deribit")
    # One refresh, unless a first attempt failed (logged) and a later request retried it.
    assert service.simulator.calls["private/get_account_summaries"] >= calls + 1
    await client.aclose()


async def test_racing_first_sign_ins_cannot_share_a_user_id(service: Service) -> None:
    async def claim(key: str) -> int:
        client_id, secret = KEYS[key]
        response = await service.client.post(
            "/api/v1/sessions",
            json={"user_id": "dave", "client_id": client_id, "client_secret": secret},
        )
        return response.status_code

    statuses = await asyncio.gather(claim("alice"), claim("bob"))
    assert sorted(statuses) == [201, 409]


async def test_the_same_subscription_sent_at_once_is_created_once(service: Service) -> None:
    client = service.client_for(await service.sign_in("alice"))
    path = "/api/v1/market/alice/create_order/eth_usd"
    responses = await asyncio.gather(*(client.get(path) for _ in range(5)))
    assert sorted(r.status_code for r in responses) == [200, 200, 200, 200, 201]
    await client.aclose()


async def test_a_flood_of_sign_ins_is_cut_off_with_429(service: Service) -> None:
    body = {"user_id": "eve", "client_id": "sim-alice", "client_secret": "guess"}
    statuses = [
        (await service.client.post("/api/v1/sessions", json=body)).status_code for _ in range(8)
    ]
    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429] * 3
    limited = await service.client.post("/api/v1/sessions", json=body)
    assert "too many sign-in attempts" in limited.json()["detail"]
    assert service.simulator.calls["public/auth"] <= 5


async def test_user_ids_of_one_key_refreshing_together_share_one_authentication(
    service: Service,
) -> None:
    """Each authentication may count against Deribit's 16 sessions per key (reference 3.3)."""
    user_ids = ["alice", "alice-desk", "alice-bot"]
    for user_id in user_ids:
        await service.sign_in(user_id, key_of="alice")
    before = service.simulator.calls["public/auth"]
    users = service.runtime.users
    wrong_secret = {"user_id": "alice", "client_id": "sim-alice", "client_secret": "wrong"}
    # Deribit slow to answer: every refresh starts while the first one's fetch is under way.
    await sim_control(service.simulator, ("sim/set_latency", {"ms": 200}))
    *profiles, wrong = await asyncio.gather(
        *(users.refresh_profile(user_id) for user_id in user_ids),
        service.client.post("/api/v1/sessions", json=wrong_secret),
    )
    await sim_control(service.simulator, ("sim/set_latency", {"ms": 0}))
    assert service.simulator.calls["public/auth"] == before + 2  # theirs, and the wrong one's
    assert {profile.account_id for profile in profiles} == {1001}
    assert wrong.status_code == 401  # a wrong secret never rides on another's answer


async def test_a_stream_opening_as_its_session_is_signed_out_is_refused(service: Service) -> None:
    token = await service.sign_in("alice")
    client, signing_out = service.client_for(token), service.client_for(token)
    opens = service.runtime.stream_opens
    admit = opens.admit
    checked, go_on = asyncio.Event(), asyncio.Event()

    async def admit_then_wait(user_id: str) -> None:  # its session was read as valid by now
        await admit(user_id)
        checked.set()
        await go_on.wait()

    opens.admit = admit_then_wait  # type: ignore[method-assign]

    async def open_it() -> int | str:
        async with open_stream(client) as stream:
            if stream.response.status_code != 200:
                return stream.response.status_code
            try:
                await stream.until("status", timeout=5)
            except EOFError:
                return "ended"
            return "open after its sign-out"

    opening = asyncio.create_task(open_it())
    await checked.wait()
    assert (await signing_out.delete("/api/v1/sessions/current")).status_code == 204
    go_on.set()
    assert await opening == 401
    assert not service.runtime.hub.streams_of("alice")
    await client.aclose()
    await signing_out.aclose()


async def test_a_refused_background_refresh_is_not_started_again_by_every_read(
    service: Service,
) -> None:
    # The user deleted the key on Deribit: the aging profile is still served, and reading it
    # again and again does not send Deribit a login each time.
    token = await service.sign_in("alice")
    await age_the_profile(service)
    refusing = {"code": 12003, "seconds": 60, "methods": ["public/auth"]}  # login_over_limit
    await sim_control(service.simulator, ("sim/fail_requests", refusing))
    client = service.client_for(token)
    logins = service.simulator.calls["public/auth"]
    assert (await client.get("/api/v1/users/alice")).status_code == 200
    users = service.runtime.users
    await eventually(lambda: not users._refreshing, what="the background refresh refused")
    assert service.simulator.calls["public/auth"] == logins + 1
    for _ in range(3):
        answer = await client.get("/api/v1/users/alice")
        assert answer.status_code == 200 and answer.json()["profile"]["username"] == "alice"
        assert not users._refreshing  # none started
    assert service.simulator.calls["public/auth"] == logins + 1
    await sim_control(service.simulator, ("sim/fail_requests", {**refusing, "seconds": 0}))
    await client.aclose()


async def test_a_refresh_that_read_the_key_before_a_new_sign_in_does_not_undo_it(
    service: Service,
) -> None:
    # The refresh read the stored key and waits on Deribit; the user signs in again with
    # another key (stored with its own, newer profile). The refresh must not overwrite that
    # profile, nor cache the old key's client id for the next 27 hours.
    await service.sign_in("alice")
    users = service.runtime.users
    database = service.runtime.database
    person = database.tables.person
    fetching, release = asyncio.Event(), asyncio.Event()
    fetch = users._fetch_profile

    async def slow_fetch(credentials: Any) -> Any:
        fetching.set()
        await release.wait()
        return await fetch(credentials)

    users._fetch_profile = slow_fetch  # type: ignore[method-assign]
    refreshing = asyncio.create_task(users.refresh_profile("alice"))
    await fetching.wait()
    async with database.transaction() as connection:  # what the new sign-in stores
        await connection.execute(
            update(person).values(
                client_id="sim-alice-2",
                client_secret_encrypted=b"another key",
                profile={"marker": "the new sign-in's"},
            )
        )
    release.set()
    await refreshing
    del users._fetch_profile
    async with database.reading() as connection:
        row = (await connection.execute(select(person.c.client_id, person.c.profile))).one()
    assert row.client_id == "sim-alice-2" and row.profile == {"marker": "the new sign-in's"}
    cached = await users._cached("alice")  # (a cache only in distributed mode)
    assert cached is None or cached.client_id == "sim-alice-2"


async def test_a_key_without_the_scope_to_read_the_account_is_a_clear_403(
    service: Service,
) -> None:
    # Deribit answers 13021 when the key lacks account:read: the sign-in says so, once.
    forbidden = {"code": 13021, "seconds": 60, "methods": ["private/get_account_summaries"]}
    await sim_control(service.simulator, ("sim/fail_requests", forbidden))
    response = await service.client.post(
        "/api/v1/sessions",
        json={"user_id": "alice", "client_id": "sim-alice", "client_secret": ALICE_SECRET},
    )
    assert "forbidden" in error(response, 403, "deribit_forbidden")
    await sim_control(service.simulator, ("sim/fail_requests", {**forbidden, "seconds": 0}))
    await service.sign_in("alice")
