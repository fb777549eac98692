"""Structured logging: one JSON object per line (or plain text), never a secret.

Fields passed through ``extra=`` become top-level keys. Secrets never reach a
log call in the first place (config holds them as ``SecretStr``); as a second
line of defence, keys that look like credentials are redacted.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_SECRET_HINTS = ("token", "secret", "password", "routing_key", "authorization")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or value is None:
                continue
            out[key] = "<redacted>" if any(h in key.lower() for h in _SECRET_HINTS) else value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines with the structured fields appended as key=value."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = [
            f"{k}={'<redacted>' if any(h in k.lower() for h in _SECRET_HINTS) else v}"
            for k, v in record.__dict__.items()
            if k not in _STANDARD and v is not None
        ]
        return f"{base} {' '.join(fields)}" if fields else base


def setup_logging(level: str = "info", fmt: str = "json") -> None:
    """Route the root logger to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would write one line per webhook: too much at volume.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
