"""Structured logging that never writes a secret.

:func:`configure` installs one handler on the ``pipeline`` logger: plain text
for people, or one JSON object per line (``--log-json``) for log collectors.
Every record passes through :class:`RedactingFilter`, which masks passwords in
URLs (``scheme://user:SECRET@host``), ``password=...``-style pairs, and every
value registered with :func:`register_secret` (the database password is
registered the moment it is read).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

__all__ = ["RedactingFilter", "configure", "redact", "register_secret"]

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]+@")
_PAIR = re.compile(r"(?i)(?P<key>(?:db_)?passw(?:or)?d|secret|token)(?P<sep>\s*[=:]\s*)[^\s,;&]+")
_SECRETS: set[str] = set()

#: Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def register_secret(value: str | None) -> None:
    """Mask ``value`` wherever it would appear in a log line from now on."""
    if value and len(value) >= 3:
        _SECRETS.add(value)


def redact(text: str) -> str:
    """Return ``text`` with passwords in URLs, secret pairs and registered secrets masked."""
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('head')}{MASK}@", text)
    text = _PAIR.sub(lambda m: f"{m.group('key')}{m.group('sep')}{MASK}", text)
    for secret in _SECRETS:
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Rewrite a record's message and extra fields with every secret masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD:
                doc[key] = value
        if record.exc_info:
            doc["error"] = redact(self.formatException(record.exc_info))
        return json.dumps(doc, default=str)


def configure(level: str = "WARNING", *, json_lines: bool = False) -> logging.Handler:
    """Send the ``pipeline`` and ``workers`` loggers to stderr, redacted; return the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    for name in ("pipeline", "workers"):
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_boinc_pipeline", False)]
        handler._boinc_pipeline = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(level.upper())
    return handler
