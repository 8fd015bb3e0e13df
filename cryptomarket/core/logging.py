"""One logging configuration for every process: stdout, plain or JSON lines, secrets masked.

A line logged while a request is handled carries that request's id (`request_id`), which the
request-id middleware (core/request_id.py) keeps in `REQUEST_ID` for the request's duration.
"""

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

MASK = "***"

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)

# Names of keys whose values must never be logged.
_SENSITIVE_KEYS = (
    "client_secret|access_token|refresh_token|token|secret|password|signature|x-secret-key"
    "|cm_session"
)
_RULES: list[tuple[re.Pattern[str], str]] = [
    # HTTP credentials anywhere (Authorization headers, reprs).
    (re.compile(r"(?i)\b((?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + MASK),
    # key=value, key: value, "key": "value", 'key': 'value' (JSON, reprs, query strings, headers).
    (
        re.compile(
            rf"""(?i)(\b(?:{_SENSITIVE_KEYS})["']?\s*[:=]\s*["']?)(?!{re.escape(MASK)})[^"'\s&,;}}]+"""
        ),
        r"\1" + MASK,
    ),
    # Passwords in URLs: scheme://user:password@host.
    (re.compile(r"(://[^:/@\s]*:)[^@\s/]+@"), r"\1" + MASK + "@"),
]


# A query parameter whose name is percent-encoded (`tok%65n=`): the server decodes the name, so
# it is as much a secret as the plain one.
_ENCODED_PARAMETER = re.compile(r"([?&;])([^=&;#\s]*%[^=&;#\s]*)=([^&;#\s]*)")
_SENSITIVE_NAME = re.compile(rf"(?i)(?:{_SENSITIVE_KEYS})")


def mask_secrets(text: str) -> str:
    """Replace every secret-looking value in the text with ***."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    if "%" in text:
        text = _ENCODED_PARAMETER.sub(_mask_encoded, text)
    return text


def _mask_encoded(match: re.Match[str]) -> str:
    name = unquote_plus(match.group(2)).strip()
    if _SENSITIVE_NAME.fullmatch(name) and match.group(3) != MASK:
        return f"{match.group(1)}{match.group(2)}={MASK}"
    return match.group(0)


class SecretMaskingFilter(logging.Filter):
    """Masks secrets in the message and traceback of every record that reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = mask_secrets(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        return True


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being handled (or None) on every record as `request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        record.request_id = request_id
        record.request_tag = f" [{request_id}]" if request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Route every logger to stdout through the secret filter; idempotent."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(SecretMaskingFilter())
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s%(request_tag)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries that log frames or requests verbatim stay at WARNING unless asked for.
    for noisy in ("websockets", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.getLevelName(level), logging.WARNING))
