"""The run journal: a run's final record, kept on local disk when the database refused it.

A run that ends because the database went away cannot write its own outcome
and counts. Without them the next run would find it still ``running`` and
mark it ``abandoned`` with whatever the last progress update held. So the
ending run writes its final row to a small JSON file instead, and the next
run for the same archive and source applies it when the database is back.

SQLite archives keep the file beside the archive (like the lock file). For
other databases it goes to a state directory: ``GRANTEX_ARCHIVE_STATE_DIR``,
else systemd's ``STATE_DIRECTORY``, else ``$XDG_STATE_HOME/grantex-archive``
(``~/.local/state/grantex-archive``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .database import sqlite_path
from .files import atomic_write_bytes
from .timestamps import parse_timestamp

ENV_STATE_DIR = "GRANTEX_ARCHIVE_STATE_DIR"

_TIME_FIELDS = ("finished_at", "first_occurred_at", "last_occurred_at", "closed_at")


@dataclass(frozen=True)
class PendingRun:
    """A run's final values that are not in the database yet."""

    run_id: int
    values: dict[str, Any]
    connection_id: int | None = None
    connection_values: dict[str, Any] | None = None


def journal_path(db_url: str, source: str, environ: dict[str, str] | None = None) -> Path:
    """Where the journal of this archive and source lives."""
    env = os.environ if environ is None else environ
    source_key = hashlib.blake2b(source.encode(), digest_size=6).hexdigest()
    archive = sqlite_path(db_url)
    if archive is not None:
        return archive.with_name(f"{archive.name}.run-{source_key}.json")
    where = sa.engine.make_url(db_url).render_as_string(hide_password=True)
    key = hashlib.blake2b(f"{where}\n{source}".encode(), digest_size=8).hexdigest()
    return _state_dir(env) / f"run-{key}.json"


def _state_dir(env: Any) -> Path:
    if env.get(ENV_STATE_DIR):
        return Path(env[ENV_STATE_DIR])
    if env.get("STATE_DIRECTORY"):
        # systemd's StateDirectory= may list several, separated by colons.
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(
        Path(env.get("HOME", "~")).expanduser() / ".local/state"
    )
    return Path(base) / "grantex-archive"


def write_pending(path: Path, pending: PendingRun) -> None:
    """Keep ``pending`` in ``path`` (atomically, synced to disk)."""
    document = {
        "run_id": pending.run_id,
        "values": _encode(pending.values),
        "connection_id": pending.connection_id,
        "connection_values": _encode(pending.connection_values or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(document, indent=1).encode())


def read_pending(path: Path) -> PendingRun | None:
    """The pending run kept in ``path``, or None (no file, or one that cannot be read)."""
    try:
        document = json.loads(path.read_bytes())
        return PendingRun(
            run_id=int(document["run_id"]),
            values=_decode(document["values"]),
            connection_id=document.get("connection_id"),
            connection_values=_decode(document.get("connection_values") or {}),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in values.items()}


def _decode(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: parse_timestamp(v) if k in _TIME_FIELDS and isinstance(v, str) else v
        for k, v in values.items()
    }
