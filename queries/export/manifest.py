"""The manifest beside an export (``PATH.manifest.json``): what it records, and its structure.

It records the filters, the row count, each file's SHA-256 and size, the
archive's watermark, the chain head and the row bound (which archive rows the
export read: ``queries.export.bound``), the tool version and the time. ``check_manifest``
refuses anything that does not have a manifest's structure, naming the
first fault, before ``verify_export`` or ``--force`` trusts it.
"""

from __future__ import annotations

import hashlib
import json
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from typing import Any

from ingest.files import atomic_write_text
from ingest.timestamps import format_timestamp, now_utc

from .plan import Plan
from .spec import FORMATS, PARTITIONS, ExportSpec, Filters, VerifyError

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Ascending seq ranges as ingest.seal.canonical.encode_keys writes them; empty for none.
_KEYS = re.compile(r"(\d+(-\d+)?(,\d+(-\d+)?)*)?")


def tool_version() -> str:
    try:
        return version("grantex-archive")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + MANIFEST_SUFFIX)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_record(
    spec: ExportSpec,
    filters: Filters,
    plan: Plan,
    watermark: int,
    files: list[dict[str, Any]],
    chain: dict[str, Any] | None = None,
    bound: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of an export of ``files`` (their entries) to ``spec.output``.

    ``chain`` is the archive's hash chain head (``{"n", "hash"}``) read after the rows: it
    covers every exported row (docs/integrity.md). ``bound`` (``{"max_seq", "absent"}``,
    ``queries.export.bound``) says with it exactly which archive rows the export read.
    """
    record = {
        "format": MANIFEST_FORMAT,
        "tool": "grantex-archive",
        "tool_version": tool_version(),
        "created_at": format_timestamp(now_utc().replace(microsecond=0)),
        "export": {
            "path": Path(spec.output).name,
            "format": spec.fmt,
            "gzip": spec.gzip,
            "partition_by": spec.partition_by,
            "columns": list(spec.chosen_columns()),
            # None: the format's default columns (for jsonl the envelope as archived).
            "columns_given": list(spec.columns) if spec.columns else None,
            "safe_formulas": spec.safe_formulas,
            "order": ["occurred_at", "id"],
        },
        "filters": filters.describe(),
        "rows": plan.rows,
        "watermark": {
            "archive_seq": watermark,
            "max_seq_included": plan.max_seq,
            "newest_occurred_at_included": (
                format_timestamp(plan.newest) if plan.newest is not None else None
            ),
        },
        "files": files,
    }
    if chain is not None:
        record["chain"] = chain
    if bound is not None:
        record["bound"] = bound
    return record


def write_manifest(manifest: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``manifest`` durably (synced, then renamed into place).

    Created as the export's files are, with the permissions the umask leaves.
    """
    atomic_write_text(manifest, json.dumps(record, indent=2) + "\n", mode=0o666)


# --------------------------------------------------------------------------- structure


def _field(record: dict[str, Any], key: str, where: str = "") -> Any:
    if key not in record:
        raise VerifyError(f"the manifest's '{where}{key}' is missing")
    return record[key]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _count(value: Any, name: str) -> int:
    # bool is an int to Python, never a count to a reader of the manifest.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise VerifyError(f"the manifest's '{name}' must be a whole number >= 0, not {value!r}")
    return value


def _check_export(export: Any) -> None:
    """The ``export`` object: the file name, format, gzip flag and partitioning."""
    if not isinstance(export, dict):
        raise VerifyError(f"the manifest's 'export' must be an object, not {_type_name(export)}")
    name = _field(export, "path", "export.")
    if not isinstance(name, str) or not name or "/" in name:
        raise VerifyError(f"the manifest's 'export.path' must be a file name, not {name!r}")
    if _field(export, "format", "export.") not in FORMATS:
        raise VerifyError(
            f"the manifest's 'export.format' must be one of {', '.join(FORMATS)}, "
            f"not {export['format']!r}"
        )
    if not isinstance(_field(export, "gzip", "export."), bool):
        raise VerifyError(
            f"the manifest's 'export.gzip' must be true or false, not {export['gzip']!r}"
        )
    partition = _field(export, "partition_by", "export.")
    if partition is not None and partition not in PARTITIONS:
        raise VerifyError(
            f"the manifest's 'export.partition_by' must be null or one of "
            f"{', '.join(sorted(PARTITIONS))}, not {partition!r}"
        )


def _check_file(entry: Any, where: str, seen: set[str]) -> None:
    """One entry of ``files``: a relative path listed once, its rows, bytes and SHA-256."""
    if not isinstance(entry, dict):
        raise VerifyError(f"the manifest's '{where}' must be an object, not {entry!r}")
    path = _field(entry, "path", f"{where}.")
    if not isinstance(path, str):
        raise VerifyError(f"the manifest's '{where}.path' must be a string, not {path!r}")
    parts = PurePosixPath(path).parts
    if not parts or path.startswith("/") or any(p in (".", "..") for p in path.split("/")):
        raise VerifyError(
            f"the manifest's '{where}.path' must be a relative path inside the export, not {path!r}"
        )
    if path in seen:
        raise VerifyError(f"the manifest lists {path!r} twice")
    seen.add(path)
    _count(_field(entry, "rows", f"{where}."), f"{where}.rows")
    _count(_field(entry, "bytes", f"{where}."), f"{where}.bytes")
    digest = _field(entry, "sha256", f"{where}.")
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise VerifyError(
            f"the manifest's '{where}.sha256' must be 64 lowercase hex digits, not {digest!r}"
        )


def _check_pair(
    value: Any, name: str, count: str, text: str, pattern: re.Pattern[str], wanted: str
) -> None:
    """The object ``name``: a whole number ``count`` and a text ``text`` matching ``pattern``."""
    if not isinstance(value, dict):
        raise VerifyError(f"the manifest's '{name}' must be an object, not {_type_name(value)}")
    _count(_field(value, count, f"{name}."), f"{name}.{count}")
    found = _field(value, text, f"{name}.")
    if not isinstance(found, str) or not pattern.fullmatch(found):
        raise VerifyError(f"the manifest's '{name}.{text}' must be {wanted}, not {found!r}")


def check_manifest(record: Any) -> dict[str, Any]:
    """``record`` if it has the structure of a manifest; VerifyError naming the first fault."""
    if not isinstance(record, dict):
        raise VerifyError(f"the manifest is not a JSON object (it is {_type_name(record)})")
    version = _field(record, "format")
    if version != MANIFEST_FORMAT or isinstance(version, bool):
        raise VerifyError(
            f"manifest format {version!r} is not one this version reads ({MANIFEST_FORMAT})"
        )
    _check_export(_field(record, "export"))
    if "chain" in record:
        _check_pair(record["chain"], "chain", "n", "hash", _SHA256, "64 lowercase hex digits")
    if "bound" in record:
        _check_pair(record["bound"], "bound", "max_seq", "absent", _KEYS, "seq ranges like '3-5,9'")
    rows = _count(_field(record, "rows"), "rows")
    files = _field(record, "files")
    if not isinstance(files, list):
        raise VerifyError(f"the manifest's 'files' must be a list, not {_type_name(files)}")
    seen: set[str] = set()
    for i, entry in enumerate(files):
        _check_file(entry, f"files[{i}]", seen)
    total = sum(entry["rows"] for entry in files)
    if total != rows:
        raise VerifyError(
            f"the manifest's files hold {total} rows in all, but its 'rows' says {rows}"
        )
    return record


def read_manifest(manifest: Path) -> dict[str, Any]:
    """The manifest at ``manifest``, checked by ``check_manifest``; VerifyError otherwise."""
    try:
        text = manifest.read_bytes()
    except FileNotFoundError:
        raise VerifyError(f"no manifest at {manifest}") from None
    except OSError as exc:
        raise VerifyError(f"cannot read {manifest}: {exc.strerror}") from None
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise VerifyError(f"{manifest} is not valid JSON ({exc})") from None
    except RecursionError:
        raise VerifyError(f"{manifest} is not a manifest (JSON nested too deeply)") from None
    return check_manifest(record)
