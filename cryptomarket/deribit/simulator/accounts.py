"""Simulated Deribit accounts: who may authenticate, and what they see.

Default accounts, used when `cryptomarket simulate` is started without `--accounts FILE`:

| client_id | client_secret    | id   | username | email             | type       |
|-----------|------------------|------|----------|-------------------|------------|
| sim-alice | sim-alice-secret | 1001 | alice    | alice@example.com | main       |
| sim-bob   | sim-bob-secret   | 1002 | bob      | bob@example.com   | subaccount |

An accounts file is a JSON list of objects with exactly these six fields.
"""

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, cast

AccountType = Literal["main", "subaccount"]


@dataclass(frozen=True)
class Account:
    client_id: str
    client_secret: str
    id: int
    username: str
    email: str
    type: AccountType = "main"

    def __repr__(self) -> str:
        # The secret stays out of reprs, so out of logs and test reports.
        return f"Account(client_id={self.client_id!r}, id={self.id}, type={self.type!r})"


DEFAULT_ACCOUNTS: tuple[Account, ...] = (
    Account("sim-alice", "sim-alice-secret", 1001, "alice", "alice@example.com", "main"),
    Account("sim-bob", "sim-bob-secret", 1002, "bob", "bob@example.com", "subaccount"),
)

_FIELDS = tuple(field.name for field in fields(Account))


def load_accounts(path: str | Path) -> list[Account]:
    """Read an accounts file; any problem raises ValueError with a one-line message."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"accounts file {path}: cannot read it ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"accounts file {path}: not valid JSON ({exc})") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"accounts file {path}: expected a non-empty JSON list of accounts")
    accounts = [_parse(entry, f"accounts file {path}: entry {n}") for n, entry in enumerate(raw)]
    for attribute in ("client_id", "id"):
        values = [getattr(account, attribute) for account in accounts]
        duplicates = sorted({str(v) for v in values if values.count(v) > 1})
        if duplicates:
            raise ValueError(f"accounts file {path}: duplicate {attribute} {', '.join(duplicates)}")
    return accounts


def _parse(entry: Any, where: str) -> Account:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected an object with fields {', '.join(_FIELDS)}")
    missing = [name for name in _FIELDS if name not in entry]
    unknown = sorted(set(entry) - set(_FIELDS))
    if missing or unknown:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(unknown)}"
        raise ValueError(f"{where}: {problem}")
    for name in ("client_id", "client_secret", "username", "email"):
        if not isinstance(entry[name], str) or not entry[name]:
            raise ValueError(f"{where}: {name} must be a non-empty string")
    if isinstance(entry["id"], bool) or not isinstance(entry["id"], int) or entry["id"] <= 0:
        raise ValueError(f"{where}: id must be a positive integer")
    if entry["type"] not in ("main", "subaccount"):
        raise ValueError(f'{where}: type must be "main" or "subaccount"')
    return Account(
        client_id=entry["client_id"],
        client_secret=entry["client_secret"],
        id=entry["id"],
        username=entry["username"],
        email=entry["email"],
        type=cast(AccountType, entry["type"]),
    )
