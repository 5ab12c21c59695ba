"""The manifest: which files make up the copy, and how far into the archive it reaches.

``MANIFEST.json`` is the copy's one mutable file. The refresher replaces it
atomically once every file it names is complete; a reader reads it first and
then only the files it lists, which are never modified.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.timestamps import now_utc

from .errors import AnalyticsError

FORMAT = 5
MANIFEST = "MANIFEST.json"

# Where a file a manifest names (``events/seq-...parquet``) is read from.
Locate = Callable[[str], Path]


@dataclass
class Segment:
    """One immutable Parquet file of archive rows, ``min_seq`` to ``max_seq``."""

    file: str
    rows: int
    min_seq: int
    max_seq: int


@dataclass
class Manifest:
    """What the copy holds; ``watermark`` is the highest archive seq copied."""

    archive: str = ""
    watermark: int = 0
    anchor_id: str | None = None
    segments: list[Segment] = field(default_factory=list)
    grants_base: str | None = None
    grants_base_rows: int = 0
    grants_delta: str | None = None
    grants_delta_rows: int = 0
    facts: str | None = None
    """The revocation facts (``queries.copy.revocations``), one file."""
    facts_rows: int = 0
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[tuple[float, int]] = field(default_factory=list)
    refreshed_at: str | None = None
    built_at: str | None = None
    schema: str | None = None
    """The archive's schema revision the copy was built from (a migration may rewrite rows)."""

    @property
    def events(self) -> int:
        return sum(s.rows for s in self.segments)

    def files(self) -> list[str]:
        out = [s.file for s in self.segments]
        out += [f for f in (self.grants_base, self.grants_delta, self.facts) if f]
        out += [t["file"] for t in self.tables.values()]
        return out

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "archive": self.archive,
            "watermark": self.watermark,
            "anchor_id": self.anchor_id,
            "events": self.events,
            "segments": [vars(s) for s in self.segments],
            "grants": {
                "base": self.grants_base,
                "base_rows": self.grants_base_rows,
                "delta": self.grants_delta,
                "delta_rows": self.grants_delta_rows,
            },
            "revocation_facts": {"file": self.facts, "rows": self.facts_rows},
            "tables": self.tables,
            "checkpoints": self.checkpoints,
            "refreshed_at": self.refreshed_at,
            "built_at": self.built_at,
            "schema": self.schema,
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise AnalyticsError(f"unknown analytics copy format {data.get('format')!r}")
        grants = data["grants"]
        return cls(
            archive=data["archive"],
            watermark=data["watermark"],
            anchor_id=data["anchor_id"],
            segments=[Segment(**s) for s in data["segments"]],
            grants_base=grants["base"],
            grants_base_rows=grants["base_rows"],
            grants_delta=grants["delta"],
            grants_delta_rows=grants["delta_rows"],
            facts=data["revocation_facts"]["file"],
            facts_rows=data["revocation_facts"]["rows"],
            tables=data["tables"],
            checkpoints=[(float(t), int(w)) for t, w in data["checkpoints"]],
            refreshed_at=data["refreshed_at"],
            built_at=data["built_at"],
            schema=data.get("schema"),
        )


def read_manifest(directory: Path) -> Manifest | None:
    """The manifest in ``directory``; None when there is none yet."""
    try:
        text = (directory / MANIFEST).read_text()
    except FileNotFoundError:
        return None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise AnalyticsError(f"{directory / MANIFEST} is damaged ({exc})") from None


def now_text() -> str:
    """The time for ``refreshed_at`` and ``built_at``: UTC, to the second, with a ``Z``.

    Not ``ingest.timestamps.format_timestamp``, which always writes
    milliseconds: manifests keep the second-precision text they have always had.
    """
    return now_utc().isoformat(timespec="seconds").replace("+00:00", "Z")


def prune_checkpoints(
    points: list[tuple[float, int]], now: float, horizon_seconds: float
) -> list[tuple[float, int]]:
    """Keep the checkpoints of the last ``horizon_seconds``, and the newest one before them."""
    horizon = now - horizon_seconds
    inside = [p for p in points if p[0] >= horizon]
    before = [p for p in points if p[0] < horizon]
    return before[-1:] + inside
