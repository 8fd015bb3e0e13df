"""`cryptomarket rotate-keys`: every stored client secret re-encrypted under the first key of
ENCRYPTION_KEYS, so the older keys can be removed.

Batches of users, in user_id order, each committed on its own: an interrupted run keeps what it
did, and a rerun skips what is already under the first key. Each write is a compare-and-set on
the old ciphertext, so a sign-in that stored a new secret meanwhile is never overwritten with a
rotation of the old one.
"""

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, func, select, update

from cryptomarket.core.tables import Tables
from cryptomarket.users.secrets import SecretBox, SecretUnreadable

BATCH = 500


@dataclass
class KeyCensus:
    """How many stored secrets each kind of key can read."""

    current: int = 0  # under the first key
    old: int = 0  # under another configured key: still need rotating
    unreadable: int = 0  # under no configured key: their users must sign in again
    rotated: int = 0  # re-encrypted by this run

    @property
    def total(self) -> int:
        return self.current + self.old + self.unreadable + self.rotated


def count_users(engine: Engine, tables: Tables) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(select(func.count()).select_from(tables.person)).scalar() or 0
        )


def rotate_secrets(
    engine: Engine,
    tables: Tables,
    box: SecretBox,
    *,
    dry_run: bool = False,
    batch_size: int = BATCH,
    on_batch: Callable[[int], None] | None = None,
) -> KeyCensus:
    """Re-encrypt (or, with `dry_run`, only count) every secret not under the first key.
    `on_batch(rows)` is called after each batch is committed."""
    person = tables.person
    census = KeyCensus()
    after = ""
    while True:
        with engine.begin() as connection:
            rows = connection.execute(
                select(person.c.user_id, person.c.client_secret_encrypted)
                .where(person.c.user_id > after)
                .order_by(person.c.user_id)
                .limit(batch_size)
            ).all()
            for user_id, ciphertext in rows:
                if not box.needs_rotation(ciphertext):
                    census.current += 1
                    continue
                try:
                    rotated = box.rotate(ciphertext)
                except SecretUnreadable:
                    census.unreadable += 1
                    continue
                if dry_run:
                    census.old += 1
                    continue
                changed = connection.execute(
                    update(person)
                    .where(person.c.user_id == user_id)
                    .where(person.c.client_secret_encrypted == ciphertext)
                    .values(client_secret_encrypted=rotated)
                ).rowcount
                if changed:
                    census.rotated += 1
                else:  # a sign-in stored a new secret meanwhile, under the first key
                    census.current += 1
        if not rows:
            return census
        after = rows[-1].user_id
        if on_batch is not None:
            on_batch(len(rows))
