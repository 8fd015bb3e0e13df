import json
import logging

import pytest

from cryptomarket.core.logging import configure_logging, mask_secrets

SECRET = "s3cr3t-VALUE-42"

LEAKY_LINES = [
    f'auth params {{"client_id": "abc", "client_secret": "{SECRET}"}}',
    f"params {{'grant_type': 'refresh_token', 'refresh_token': '{SECRET}'}}",
    f'result {{"access_token":"{SECRET}","token_type":"bearer"}}',
    f"GET /api/v2/sse/connection?timer=5&token={SECRET} HTTP/1.1",
    f"headers X-Secret-key: {SECRET}",
    f"header Authorization: Bearer {SECRET}",
    f"database postgresql+asyncpg://crypto:{SECRET}@db:5432/crypto",
    f"signed client_signature signature={SECRET}&nonce=1",
    f"set-cookie: cm_session={SECRET}; HttpOnly; Path=/",
]


@pytest.mark.parametrize("line", LEAKY_LINES)
def test_mask_removes_the_secret_and_keeps_the_rest(line: str) -> None:
    masked = mask_secrets(line)
    assert SECRET not in masked
    assert "***" in masked
    assert masked.split()[0] == line.split(maxsplit=1)[0]


def test_harmless_text_is_left_alone() -> None:
    line = 'price {"ticker": "btc_usd", "price": 87000.5, "token_type": "bearer"}'
    assert mask_secrets(line) == line


def test_no_logged_line_carries_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("DEBUG")
    log = logging.getLogger("cryptomarket.test")
    for line in LEAKY_LINES:
        log.info(line)
    log.warning("with args %s and %r", {"client_secret": SECRET}, f"token={SECRET}")
    try:
        raise ValueError(f"refused {{'access_token': '{SECRET}'}}")
    except ValueError:
        log.exception("failed")
    out = capsys.readouterr().out
    assert SECRET not in out
    assert out.count("***") >= len(LEAKY_LINES) + 2
    assert "ValueError" in out  # the traceback is still there, masked


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", json_lines=True)
    logging.getLogger("cryptomarket.test").info("client_secret=%s sent", SECRET)
    logging.getLogger("cryptomarket.test").debug("below the level")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "INFO"
    assert entry["logger"] == "cryptomarket.test"
    assert entry["message"] == "client_secret=*** sent"


def test_a_secret_parameter_with_an_encoded_name_is_masked_too() -> None:
    # The server decodes `tok%65n` to `token` and signs in with it: the access line must not
    # show it in clear.
    for name in ("tok%65n", "%74oken", "client_s%65cret"):
        masked = mask_secrets(f"GET /api/v2/sse/connection?timer=5&{name}={SECRET} HTTP/1.1")
        assert SECRET not in masked and "timer=5" in masked
    harmless = "GET /api/v1/prices?ticker=btc%5Fusd&limit=10 HTTP/1.1"
    assert mask_secrets(harmless) == harmless
