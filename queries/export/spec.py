"""What an export is asked for: its file, format, columns and filters, and the errors it raises.

``format_for`` and ``check_suffix`` read the format from PATH's name and
refuse a name that disagrees with the content; ``Filters.where`` is the SQL
that selects the rows (the time window and the agent filter are the reports'
own, from ``queries.filter_sql``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ingest.timestamps import format_timestamp

from ..filter_sql import owned_by, window
from .columns import ALL_COLUMNS, DEFAULT_COLUMNS

FORMATS = ("csv", "jsonl", "parquet")
PARTITIONS = {"day": "occurred_date", "month": "occurred_month"}
# File name endings and the format each stands for (a further .gz: gzip).
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


class ExportError(Exception):
    """An export could not be written."""


class TargetError(ExportError):
    """PATH may not be written or replaced: the message says why and what to do."""


class SuffixError(ExportError):
    """PATH's name disagrees with what would be written into it (a usage error)."""


class ExportInterrupted(ExportError):
    """The export was interrupted (Ctrl-C); nothing was left under PATH."""


class OutputClosed(ExportError):
    """Standard output was closed by its reader (``| head``): not a failure."""


class VerifyError(Exception):
    """An export does not match its manifest."""


def _suffix_of(path: str) -> tuple[str | None, bool]:
    """The known format suffix of ``path``'s name (``.csv`` ...), and whether it ends in .gz."""
    name = PurePosixPath(path).name.lower()
    gz = name.endswith(".gz")
    if gz:
        name = name[:-3]
    return next((s for s in SUFFIXES if name.endswith(s)), None), gz


def format_for(path: str, given: str | None) -> tuple[str, bool]:
    """The format and gzip flag for ``path`` (``.csv``, ``.jsonl``, ``.parquet``, ``.gz``).

    Lenient (CSV when nothing says otherwise); ``check_suffix`` then refuses a
    name that disagrees with the result.
    """
    suffix, gz = _suffix_of(path)
    return (given or (SUFFIXES[suffix] if suffix else None) or "csv"), gz


def check_suffix(path: str, given: str | None, fmt: str, gz: bool) -> None:
    """Refuse a file name whose ending disagrees with the content (SuffixError).

    A known ending (``.csv``, ``.jsonl``, ``.ndjson``, ``.parquet``) must match
    the format; gzip needs ``.gz`` and ``.gz`` means gzip; a name with any other
    ending needs ``--format``. Standard output (``-``) takes any format.
    """
    if path == "-":
        return
    suffix, suffix_gz = _suffix_of(path)
    if suffix is None and given is None:
        raise SuffixError(
            f"cannot tell the format of {path!r} from its name: end it in .csv, .jsonl or "
            ".parquet (with .gz to compress csv or jsonl), or give --format"
        )
    if suffix is not None and SUFFIXES[suffix] != fmt:
        raise SuffixError(
            f"{path!r} ends in {suffix} but --format is {fmt}: name it "
            f"{_renamed(path, fmt, gz)} or drop --format"
        )
    if gz and not suffix_gz:
        raise SuffixError(f"--gzip writes gzip: name the file {path}.gz")


def _renamed(path: str, fmt: str, gz: bool) -> str:
    pure = PurePosixPath(path)
    stem = pure.name[:-3] if pure.name.lower().endswith(".gz") else pure.name
    base = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    return str(pure.with_name(f"{base}.{fmt}{'.gz' if gz else ''}"))


@dataclass(frozen=True)
class Filters:
    types: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    source: str | None = None
    grant_id: str | None = None
    agent_id: str | None = None
    principal_id: str | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        """A WHERE clause over the events view, with its parameters."""
        parts: list[str] = []
        params: dict[str, Any] = {}
        if self.types:
            parts.append("type IN (SELECT unnest($types))")
            params["types"] = list(self.types)
        if self.since is not None or self.until is not None:
            parts.append(window("occurred_at"))
            params.update(since=self.since, until=self.until)
        if self.source is not None:
            parts.append("source = $source")
            params["source"] = self.source
        if self.grant_id is not None:
            parts.append("(grant_id = $grant OR list_contains(revoked_grants, $grant))")
            params["grant"] = self.grant_id
        if self.agent_id is not None:
            parts.append(owned_by("agent_id", "$agent"))
            params["agent"] = self.agent_id
        if self.principal_id is not None:
            parts.append(owned_by("principal_id", "$principal"))
            params["principal"] = self.principal_id
        return (" AND ".join(parts) or "true"), params

    def describe(self) -> dict[str, Any]:
        """The filters given, as the manifest records them."""
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if value in (None, ()):
                continue
            out[key] = (
                format_timestamp(value)
                if isinstance(value, datetime)
                else list(value)
                if isinstance(value, tuple)
                else value
            )
        return out


@dataclass
class ExportSpec:
    output: str  # a path, or "-" for standard output
    fmt: str = "csv"
    gzip: bool = False
    columns: tuple[str, ...] | None = None
    partition_by: str | None = None
    force: bool = False
    safe_formulas: bool = False

    def chosen_columns(self) -> tuple[str, ...]:
        if self.columns:
            return self.columns
        return ("payload",) if self.fmt == "jsonl" else DEFAULT_COLUMNS


@dataclass
class ExportResult:
    rows: int
    files: list[dict[str, Any]] = field(default_factory=list)
    manifest: Path | None = None


def check_columns(names: tuple[str, ...]) -> None:
    """ExportError unless every name is an exportable column, given once."""
    unknown = [n for n in names if n not in ALL_COLUMNS]
    if unknown:
        raise ExportError(f"unknown column {unknown[0]!r}; choose from {', '.join(ALL_COLUMNS)}")
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ExportError(f"column {sorted(seen)[0]!r} given twice")
