"""Logging to stderr, as text for people or JSON lines for machines.

Every record passes a redaction filter, so a bearer token or the API key
cannot reach a log even if some library prints a header.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

_BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",]+")


class Redactor(logging.Filter):
    """Masks secrets in the rendered message of every record."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        super().__init__()
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                # The key as written, and as reprs and byte reprs show it.
                forms.update({secret, repr(secret)[1:-1], repr(secret.encode())[2:-1]})
        self.secrets = tuple(sorted(forms, key=len, reverse=True))

    def redact(self, text: str) -> str:
        text = _BEARER.sub(r"\1********", text)
        for secret in self.secrets:
            text = text.replace(secret, "********")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        # Values a machine reads (counts, outcome) travel as fields of their
        # own, not only inside the message.
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(
    fmt: str = "text", level: int = logging.INFO, secrets: tuple[str, ...] = ()
) -> Redactor:
    """Send the project's logs to stderr; quiet the HTTP client's own request logs."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S%z")
        )
    redactor = Redactor(secrets)
    handler.addFilter(redactor)
    root = logging.getLogger("grantex_archive")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return redactor
