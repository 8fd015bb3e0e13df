"""Request ids: kept when sane, made when missing or not, on every response and log line."""

import json
import logging
import re

import pytest

from __tests__.service import Service
from __tests__.sse import open_stream
from cryptomarket.core.logging import REQUEST_ID, RequestIdFilter, configure_logging

GENERATED = re.compile(r"[0-9a-f]{32}")


async def test_a_sane_id_is_echoed_on_success_and_on_errors(service: Service) -> None:
    for path, status in (("/health", 200), ("/api/v1/prices?ticker=NOPE!", 422), ("/nope", 404)):
        response = await service.client.get(path, headers={"X-Request-ID": "edge-7f3a.91:b/c=="})
        assert response.status_code == status
        assert response.headers["x-request-id"] == "edge-7f3a.91:b/c=="


async def test_an_id_is_made_when_none_is_sent(service: Service) -> None:
    first = await service.client.get("/health")
    second = await service.client.get("/health")
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert all(GENERATED.fullmatch(one) for one in ids), ids
    assert ids[0] != ids[1]
    assert first.headers.get_list("x-request-id") == [ids[0]]  # one header, not two


@pytest.mark.parametrize(
    "sent",
    ["short", "x" * 129, "has space in it", 'quote"and<angle>', "ünïcode-1234"],
)
async def test_an_insane_id_is_replaced(service: Service, sent: str) -> None:
    response = await service.client.get(
        "/health", headers=[(b"X-Request-ID", sent.encode("utf-8"))]
    )
    assert response.status_code == 200
    assert GENERATED.fullmatch(response.headers["x-request-id"])


async def test_a_stream_carries_its_id_and_still_streams(service: Service) -> None:
    token = await service.sign_in("alice")
    client = service.client_for(token)
    try:
        async with open_stream(client, headers={"X-Request-ID": "stream-0001"}) as stream:
            assert stream.response.status_code == 200
            assert stream.response.headers["x-request-id"] == "stream-0001"
            await stream.until("connected")
            await stream.until("status")  # events arrive one by one, not buffered to the end
    finally:
        await client.aclose()


async def test_log_lines_of_a_request_carry_its_id(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("INFO", json_lines=True)  # the process's logging, into captured stdout
    root = logging.getLogger()
    ours = root.handlers[-1]
    try:
        await _logged_with_ids(service, capsys)
    finally:
        root.removeHandler(ours)  # it writes to this test's captured stdout, closed after


async def _logged_with_ids(service: Service, capsys: pytest.CaptureFixture[str]) -> None:
    response = await service.client.post(
        "/api/v1/sessions",
        json={"user_id": "alice", "client_id": "sim-alice", "client_secret": "sim-alice-secret"},
        headers={"X-Request-ID": "signin-42-abc"},
    )
    assert response.status_code == 201
    await service.client.get("/health", headers={"X-Request-ID": "health-43-abc"})
    logging.getLogger("cryptomarket.test").info("between requests")
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    signed_in = [e for e in entries if e["message"].startswith("user alice signed in")]
    assert [e.get("request_id") for e in signed_in] == ["signin-42-abc"]
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert {e.get("request_id") for e in access} == {"signin-42-abc", "health-43-abc"}
    outside = [e for e in entries if e["message"] == "between requests"]
    assert len(outside) == 1 and "request_id" not in outside[0]


def test_plain_lines_show_the_id_only_inside_a_request() -> None:
    formatter = logging.Formatter("%(name)s%(request_tag)s: %(message)s")
    request_filter = RequestIdFilter()

    def line() -> str:
        record = logging.LogRecord("cryptomarket.t", logging.INFO, __file__, 1, "hi", None, None)
        request_filter.filter(record)
        return formatter.format(record)

    assert line() == "cryptomarket.t: hi"
    token = REQUEST_ID.set("req-12345678")
    try:
        assert line() == "cryptomarket.t [req-12345678]: hi"
    finally:
        REQUEST_ID.reset(token)
