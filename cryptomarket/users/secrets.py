"""Client secrets at rest: Fernet under ENCRYPTION_KEYS, the first key encrypting, all decrypting.

The keys come from the environment, never from the database the ciphertexts live in. Without keys
(allowed only with DEBUG) a key is made for this process alone: secrets stored under it cannot be
read after a restart, and their users sign in again.
"""

import logging

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

logger = logging.getLogger("cryptomarket.users.secrets")


class SecretUnreadable(Exception):
    """The ciphertext was made with a key that is no longer configured."""


class SecretBox:
    def __init__(self, keys: list[SecretStr]) -> None:
        if not keys:
            logger.warning(
                "ENCRYPTION_KEYS is not set: client secrets are encrypted with a key that lives "
                "only as long as this process (fine for development, never for production)"
            )
            keys = [SecretStr(Fernet.generate_key().decode())]
        self._fernets = [Fernet(key.get_secret_value().encode()) for key in keys]
        self._box = MultiFernet(self._fernets)

    def encrypt(self, secret: str) -> bytes:
        return self._box.encrypt(secret.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._box.decrypt(token).decode()
        except InvalidToken:
            raise SecretUnreadable(
                "the stored secret was encrypted with a key no longer configured"
            ) from None

    def needs_rotation(self, token: bytes) -> bool:
        """True when the newest key did not make this ciphertext."""
        try:
            self._fernets[0].decrypt(token)
        except InvalidToken:
            return True
        return False

    def rotate(self, token: bytes) -> bytes:
        """The same secret, encrypted under the newest key."""
        try:
            return self._box.rotate(token)
        except InvalidToken:
            raise SecretUnreadable(
                "the stored secret was encrypted with a key no longer configured"
            ) from None
