import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr

from cryptomarket.users.secrets import SecretBox, SecretUnreadable


def keys(*raw: bytes) -> list[SecretStr]:
    return [SecretStr(key.decode()) for key in raw]


def test_secrets_survive_a_key_rotation_and_move_to_the_new_key() -> None:
    old, new = Fernet.generate_key(), Fernet.generate_key()
    stored = SecretBox(keys(old)).encrypt("s3cret")
    assert b"s3cret" not in stored

    rotated_box = SecretBox(keys(new, old))  # the newest key first, the old one still readable
    assert rotated_box.decrypt(stored) == "s3cret"
    assert rotated_box.needs_rotation(stored)
    moved = rotated_box.rotate(stored)
    assert not rotated_box.needs_rotation(moved)
    assert SecretBox(keys(new)).decrypt(moved) == "s3cret"  # the old key can now be retired
    with pytest.raises(SecretUnreadable):
        SecretBox(keys(new)).decrypt(stored)


def test_without_keys_a_process_key_is_used(caplog: pytest.LogCaptureFixture) -> None:
    box = SecretBox([])
    assert box.decrypt(box.encrypt("x")) == "x"
    assert "ENCRYPTION_KEYS is not set" in caplog.text
    with pytest.raises(SecretUnreadable):
        SecretBox([]).decrypt(box.encrypt("x"))  # a restart cannot read it back
