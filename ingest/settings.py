"""Settings from flags and the environment, including the API key.

The key is read from ``GRANTEX_API_KEY`` or from a file, never from the
command line, and is wrapped so that printing the settings cannot show it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx

DEFAULT_DB = "sqlite:///grantex-archive.db"
DEFAULT_BASE_URL = "https://api.grantex.dev"
ENV_DB = "GRANTEX_ARCHIVE_DB"
ENV_API_KEY = "GRANTEX_API_KEY"
ENV_BASE_URL = "GRANTEX_BASE_URL"


class ConfigError(Exception):
    """A setting is missing or invalid."""


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


_KEY_CHARACTERS = re.compile(r"[\x21-\x7e]+")


def load_api_key(key_file: Path | None, environ: Mapping[str, str] | None = None) -> Secret:
    """The API key from ``--api-key-file`` or ``GRANTEX_API_KEY``; the file wins.

    The key must be one line of visible ASCII: anything else could not go in
    an HTTP header, and error messages about it would echo it.
    """
    env = os.environ if environ is None else environ
    if key_file is not None:
        try:
            value = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"cannot read API key file {key_file}: {reason}") from None
        where = f"the API key in {key_file}"
        if not value:
            raise ConfigError(f"API key file {key_file} is empty")
    else:
        value = env.get(ENV_API_KEY, "").strip()
        where = f"{ENV_API_KEY}"
        if not value:
            raise ConfigError(
                f"no API key: set {ENV_API_KEY} or pass --api-key-file PATH "
                "(the key is never accepted as a flag)"
            )
    if not _KEY_CHARACTERS.fullmatch(value):
        raise ConfigError(
            f"{where} is not a valid key: expected one line of printable ASCII "
            "without spaces (the value is not shown)"
        )
    return Secret(value)


def check_base_url(url: str) -> str:
    """Validate the service's base URL; returns it without a trailing slash."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid base URL {url!r}: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"invalid base URL {url!r}: expected http(s)://host[:port]")
    if parsed.userinfo:
        raise ConfigError("the base URL must not carry credentials; use GRANTEX_API_KEY")
    if parsed.query or parsed.fragment or "?" in url or "#" in url:
        raise ConfigError(f"invalid base URL {url!r}: no query string or fragment allowed")
    if any(c.isspace() for c in url) or not _HOST.fullmatch(parsed.host):
        raise ConfigError(f"invalid base URL {url!r}: bad host name")
    authority = url.split("://", 1)[1].split("/", 1)[0]
    port = authority.rsplit(":", 1)[1] if ":" in authority.rsplit("]", 1)[-1] else ""
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"invalid base URL {url!r}: port must be 1-65535")
    return url.rstrip("/")


_HOST = re.compile(r"[A-Za-z0-9.\-_]+|\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]+")


def parse_types(value: str | None) -> tuple[str, ...]:
    """``--types a,b`` as a sorted tuple without blanks or repeats."""
    if not value:
        return ()
    types = sorted({part.strip() for part in value.split(",") if part.strip()})
    if not types:
        raise ConfigError("--types needs at least one event type")
    return tuple(types)


@dataclass(frozen=True)
class IngestSettings:
    """Everything one ingest run needs; built by the CLI, used by the worker."""

    db_url: str
    base_url: str
    api_key: Secret = field(repr=False)
    source: str = "default"
    types: tuple[str, ...] = ()
    since: datetime | None = None
    overlap: float = 300.0
    until_idle: float | None = None
    max_runtime: float | None = None
    max_events: int | None = None
    batch_size: int = 1000
    flush_interval: float = 1.0
    read_timeout: float = 90.0
    connect_timeout: float = 10.0
    progress_interval: float = 10.0
    db_retry_timeout: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 5.0
    """Longest reconnect delay without Retry-After (``--max-backoff``): short, since the
    live service keeps no history and every second without a stream is lost."""
    wait_lock: float | None = None
    """Seconds to wait for a lock another ingest holds (``--wait-lock``); None: exit 75 at once."""
    hold_events: int = 100_000
    """While waiting for the lock: events kept unwritten, at most."""
    hold_bytes: int = 64 * 1024 * 1024
    """While waiting for the lock: bytes of frames kept unwritten, at most."""
    reader_process: bool = True
    """Read the stream in a child process (:mod:`ingest.reader_process`), so that reading and
    writing run on two cores; False reads it on a thread of the ingest process."""
