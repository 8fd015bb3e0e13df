"""`client_signature` against fixed vectors, never against our own signer (reference section 3.1).

The reference documents one signed request (client_id AMANDA). It was made with the secret of
Deribit's own docs example, "AMANDASECRECT" (sic): HMAC-SHA256 of "1576074319000\\n1iqt2wls\\n"
under that key is the documented signature, which this file's first vector pins. The second
vector (with data) was computed once with Python's hmac module from the documented formula and is
kept as a literal, so neither the client's signer nor the simulator's verifier is its own judge.
"""

import pytest

from cryptomarket.deribit import auth
from cryptomarket.deribit.auth import Credentials, client_signature
from cryptomarket.deribit.simulator import Simulator
from cryptomarket.deribit.simulator import auth_methods as simulator_auth
from cryptomarket.deribit.simulator.accounts import Account

SECRET = "AMANDASECRECT"
DOCUMENTED_REQUEST = {
    "grant_type": "client_signature",
    "client_id": "AMANDA",
    "timestamp": 1576074319000,
    "nonce": "1iqt2wls",
    "data": "",
    "signature": "56590594f97921b09b18f166befe0d1319b198bbcdad7ca73382de2f88fe9aa1",
}
# (secret, timestamp, nonce, data, signature)
VECTORS = [
    (SECRET, 1576074319000, "1iqt2wls", "", DOCUMENTED_REQUEST["signature"]),
    (
        SECRET,
        1576074319000,
        "1iqt2wls",
        "some user data",
        "17356041bc45dbf054d251b10f1c27d9bcc0bd0ef58a70c41f2987beadbd2a51",
    ),
    (
        "sim-alice-secret",
        1700000000000,
        "abc",
        "",
        "e2269ef8cf04e44779aa9da2f91d56450ca2e915814ca02c511a16b0b5a2ef46",
    ),
]


@pytest.mark.parametrize(("secret", "timestamp", "nonce", "data", "signature"), VECTORS)
def test_the_client_signs_as_documented(
    secret: str, timestamp: int, nonce: str, data: str, signature: str
) -> None:
    assert client_signature(secret, timestamp, nonce, data) == signature


def test_the_client_sends_the_documented_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the documented clock and nonce, the client's whole auth request is the reference's."""
    monkeypatch.setattr(auth.time, "time", lambda: 1576074319.0)
    monkeypatch.setattr(auth.secrets, "token_hex", lambda _bytes: "1iqt2wls")
    key = Credentials("AMANDA", SECRET, grant_type="client_signature")
    assert key.auth_params() == DOCUMENTED_REQUEST


@pytest.mark.parametrize(("secret", "timestamp", "nonce", "data", "signature"), VECTORS)
def test_the_simulator_expects_the_documented_signature(
    secret: str, timestamp: int, nonce: str, data: str, signature: str
) -> None:
    assert simulator_auth.expected_signature(secret, timestamp, nonce, data) == signature
    # One byte more or less in the signed string is another signature.
    assert simulator_auth.expected_signature(secret, timestamp, nonce, data + "\n") != signature
    assert simulator_auth.expected_signature(secret, timestamp, nonce + "\n", data) != signature


async def test_the_simulator_accepts_the_documented_request_verbatim(
    simulator_factory, connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent as the reference shows it, at the moment it was made (the simulator's clock set to
    half a second later): granted. The same request with one character of data is refused."""
    amanda = Account("AMANDA", SECRET, 1003, "amanda", "amanda@example.com")
    simulator: Simulator = await simulator_factory(accounts=[amanda])
    monkeypatch.setattr(simulator_auth, "now_ms", lambda: 1576074319500)
    client = await connect(simulator)
    result = await client.result("public/auth", DOCUMENTED_REQUEST)
    assert result["token_type"] == "bearer"
    altered = {**DOCUMENTED_REQUEST, "nonce": "other", "data": "x"}
    refused = await client.error("public/auth", altered)
    assert refused["code"] == 13009
