"""The receiver's settings: where to listen, the signing secrets, how to check them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..settings import ConfigError, Secret
from .signature import DEFAULT_TOLERANCE

DEFAULT_PATH = "/grantex/webhook"
MAX_BODY_BYTES = 1024 * 1024
"""Larger deliveries are refused with 413 (the stream's frame limit)."""

_SECRET = re.compile(r"[\x21-\x7e]+")
_HOST = re.compile(r"[A-Za-z0-9.\-_]+|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True)
class ReceiverSettings:
    """Everything ``receive`` needs; built by the command line."""

    db_url: str
    host: str
    port: int
    secrets: tuple[Secret, ...] = field(repr=False)
    source: str = "default"
    path: str = DEFAULT_PATH
    tolerance: float = DEFAULT_TOLERANCE
    allow_legacy: bool = False
    drain_timeout: int = 20
    """Seconds to wait for the requests in flight after SIGTERM."""


def load_secrets(files: tuple[Path, ...]) -> tuple[Secret, ...]:
    """The signing secrets: each non-blank line of each file (``#`` starts a comment line).

    Several lines, or several files, hold the secrets in use during a
    rotation; a delivery signed with any of them is accepted.
    """
    if not files:
        raise ConfigError("no webhook secret: pass --secret-file PATH (never the secret itself)")
    found: list[Secret] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read secret file {path}: {reason}") from None
        lines = [line.strip() for line in text.splitlines()]
        values = [line for line in lines if line and not line.startswith("#")]
        if not values:
            raise ConfigError(f"secret file {path} holds no secret")
        for number, value in enumerate(values, 1):
            if not _SECRET.fullmatch(value):
                raise ConfigError(
                    f"secret {number} in {path} is not one word of printable ASCII "
                    "(the value is not shown)"
                )
            found.append(Secret(value))
    return tuple(dict.fromkeys(found))


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a host and a port (0: any free port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    if not _HOST.fullmatch(host):
        raise ConfigError(f"--listen {value!r}: bad host")
    return host.strip("[]"), int(port)


def check_path(path: str) -> str:
    if not path.startswith("/") or any(c.isspace() or c in "?#" for c in path):
        raise ConfigError(f"--path {path!r}: expected an absolute URL path such as {DEFAULT_PATH}")
    if path == "/healthz":
        raise ConfigError("--path /healthz is the health check's")
    return path
