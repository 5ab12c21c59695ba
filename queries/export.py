"""Audit exports: CSV, JSON Lines and Parquet files with a manifest that proves them.

DuckDB reads the analytics copy one time slice at a time (``plan_export``),
so memory stays bounded whatever the size. For CSV and JSON Lines DuckDB
writes each slice (``COPY ... TO``) into a pipe that a writer thread hashes,
and gzips if asked, on the way to the file; for Parquet its Arrow batches go
to pyarrow's Parquet writer. No row becomes a Python object. Every file is
written under a temporary name, locked while it is written, and renamed into
place once complete; the next export of the same PATH removes the temporary
files that killed exports left (those nobody holds a lock on). The manifest
beside it (``PATH.manifest.json``) records the filters, the row count, each
file's SHA-256 and the archive's watermark, and ``verify_export`` checks all of
it. ``--force`` replaces only a previous export of the same shape: a file, or a
partitioned directory, with its manifest beside it.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import gzip
import hashlib
import io
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import duckdb

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_FORMAT = 1
FORMATS = ("csv", "jsonl", "parquet")
PARTITIONS = {"day": "occurred_date", "month": "occurred_month"}
# RFC 4180: CRLF line ends, quotes doubled; NULL is an empty cell, '' is "".
CSV_OPTIONS = "FORMAT csv, HEADER true, NEW_LINE '\\r\\n'"

# ISO 8601 UTC with Z: milliseconds (as the producer sends), microseconds when present.
_ISO = (
    "strftime({c}, CASE WHEN microsecond({c}) % 1000 = 0 "
    "THEN '%Y-%m-%dT%H:%M:%S.%gZ' ELSE '%Y-%m-%dT%H:%M:%S.%fZ' END)"
)

# name -> (expression for text formats, expression for Parquet), in the
# documented column order. ``data`` is the event's data as compact JSON.
COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("id", "id"),
    "type": ("type", "type"),
    "occurred_at": (_ISO.format(c="occurred_at"), "occurred_at"),
    "source": ("source", "source"),
    "grant_id": ("grant_id", "grant_id"),
    "agent_id": ("agent_id", "agent_id"),
    "principal_id": ("principal_id", "principal_id"),
    "revoked_by": ("revoked_by", "revoked_by"),
    "token_id": ("token_id", "token_id"),
    "method": ("method", "method"),
    "percentage": ("percentage", "percentage"),
    "remaining": ("remaining", "remaining"),
    "initial": ("initial", "initial"),
    "data": (
        "CAST(json_extract(payload, '$.data') AS VARCHAR)",
        "CAST(json_extract(payload, '$.data') AS VARCHAR)",
    ),
}
DEFAULT_COLUMNS = tuple(COLUMNS)
# Further archive columns --columns may ask for.
EXTRA_COLUMNS: dict[str, tuple[str, str]] = {
    "seq": ("seq", "seq"),
    "received_at": (_ISO.format(c="received_at"), "received_at"),
    "payload": ("payload", "payload"),
}
ALL_COLUMNS = {**COLUMNS, **EXTRA_COLUMNS}
TEXT_COLUMNS = {
    "id", "type", "source", "grant_id", "agent_id", "principal_id", "revoked_by", "token_id",
    "method", "data", "payload",
}  # fmt: skip
# Characters that make a spreadsheet treat a cell as a formula.
FORMULA_START = "^[=+\\-@\t\r]"


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


def tool_version() -> str:
    try:
        return version("grantex-archive")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


# File name endings and the format each stands for (a further .gz: gzip).
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}


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
        if self.since is not None:
            parts.append("occurred_at >= $since")
            params["since"] = self.since
        if self.until is not None:
            parts.append("occurred_at < $until")
            params["until"] = self.until
        if self.source is not None:
            parts.append("source = $source")
            params["source"] = self.source
        if self.grant_id is not None:
            parts.append("(grant_id = $grant OR list_contains(revoked_grants, $grant))")
            params["grant"] = self.grant_id
        # An agent's or principal's events include those about its grants that
        # do not name it (grant.revoked, budget events).
        if self.agent_id is not None:
            parts.append(
                "(agent_id = $agent OR grant_id IN "
                "(SELECT grant_id FROM grants WHERE agent_id = $agent))"
            )
            params["agent"] = self.agent_id
        if self.principal_id is not None:
            parts.append(
                "(principal_id = $principal OR grant_id IN "
                "(SELECT grant_id FROM grants WHERE principal_id = $principal))"
            )
            params["principal"] = self.principal_id
        return (" AND ".join(parts) or "true"), params

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            if value in (None, ()):
                continue
            out[key] = (
                value.isoformat().replace("+00:00", "Z")
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
    unknown = [n for n in names if n not in ALL_COLUMNS]
    if unknown:
        raise ExportError(f"unknown column {unknown[0]!r}; choose from {', '.join(ALL_COLUMNS)}")
    seen = {n for n in names if names.count(n) > 1}
    if seen:
        raise ExportError(f"column {sorted(seen)[0]!r} given twice")


def _select(spec: ExportSpec, where: str) -> str:
    """The rows to export in their output form, ordered by occurred_at, then id."""
    names = spec.chosen_columns()
    exprs = []
    for name in names:
        text, typed = ALL_COLUMNS[name]
        expr = typed if spec.fmt == "parquet" else text
        if spec.fmt == "jsonl" and spec.columns and name == "payload":
            expr = "json(payload)"
        if spec.fmt == "jsonl" and spec.columns and name == "data":
            expr = "json_extract(payload, '$.data')"
        if spec.safe_formulas and name in TEXT_COLUMNS:
            expr = (
                f"CASE WHEN regexp_matches({expr}, '{FORMULA_START}') "
                f"THEN '''' || {expr} ELSE {expr} END"
            )
        exprs.append(f"{expr} AS {name}")
    if spec.fmt == "jsonl" and not spec.columns:
        # One envelope per line as archived; a payload that spanned lines is compacted.
        exprs = [
            "CASE WHEN contains(payload, chr(10)) OR contains(payload, chr(13)) "
            "THEN CAST(json(payload) AS VARCHAR) ELSE payload END AS payload"
        ]
    if spec.partition_by:
        part = PARTITIONS[spec.partition_by]
        unit = "%Y-%m-%d" if spec.partition_by == "day" else "%Y-%m"
        exprs.append(f"strftime(occurred_at, '{unit}') AS {part}")
    # Ordered by the stored values: the text formats shadow occurred_at with a string.
    return (
        f"SELECT {', '.join(exprs)} FROM events WHERE {where} "
        "ORDER BY events.occurred_at, events.id"
    )


def _copy_options(spec: ExportSpec, header: bool = True) -> str:
    """DuckDB COPY options for a text format (the writer thread does the gzip)."""
    if spec.fmt == "csv":
        return CSV_OPTIONS if header else CSV_OPTIONS.replace("HEADER true", "HEADER false")
    if spec.columns:
        return "FORMAT json"
    return "FORMAT csv, HEADER false, QUOTE '', ESCAPE ''"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + MANIFEST_SUFFIX)


# An export is written one time slice at a time: each slice's rows are ordered
# by occurred_at and id, and the slices follow each other in time, so DuckDB
# never sorts more than about SLICE_ROWS rows at once and memory stays bounded
# whatever the export's size.
SLICE_ROWS = 200_000
# ... and about SLICE_BYTES of payload, whichever comes first (wide events).
SLICE_BYTES = 64 << 20
# Parquet slices are this share of those: pyarrow holds a row group in memory
# beside DuckDB's sorted slice.
PARQUET_SLICE_SHARE = 0.5
# DuckDB's memory for an export session; beyond it, sorts spill to disk.
EXPORT_MEMORY_LIMIT = "320MB"
PARQUET_ROW_GROUP = 100_000
# The pipe between DuckDB and the writer thread.
PIPE_BYTES = 1 << 20

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Slice:
    """Rows with occurred_at in [since, until); None is no bound (first and last slice)."""

    since: datetime | None
    until: datetime | None
    rows: int


@dataclass
class Plan:
    rows: int
    max_seq: int | None
    newest: datetime | None
    slices: list[Slice]


def plan_export(
    conn: duckdb.DuckDBPyConnection,
    where: str,
    params: dict[str, Any],
    slice_rows: int | None = None,
    share: float = 1.0,
) -> Plan:
    """Count what ``where`` selects, and cut it into time slices of about ``slice_rows``.

    ``share`` scales both the row and the payload bound (for Parquet).
    """
    limit = max(1, int((slice_rows or SLICE_ROWS) * share))
    max_bytes = SLICE_BYTES * share
    hours = conn.execute(
        "SELECT date_trunc('hour', occurred_at) AS hour, count(*), max(seq), max(occurred_at), "
        f"sum(strlen(payload)) FROM events WHERE {where} GROUP BY hour ORDER BY hour",
        params,
    ).fetchall()
    starts: list[tuple[datetime, int, int]] = []  # (first hour, rows, bytes) of each slice
    for hour, count, _, _, size in hours:
        if not starts or (
            starts[-1][1] and (starts[-1][1] + count > limit or starts[-1][2] + size > max_bytes)
        ):
            starts.append((hour, 0, 0))
        first, rows, total = starts[-1]
        starts[-1] = (first, rows + int(count), total + int(size))
    slices = [
        Slice(
            since=None if i == 0 else first,
            until=starts[i + 1][0] if i + 1 < len(starts) else None,
            rows=rows,
        )
        for i, (first, rows, _) in enumerate(starts)
    ]
    return Plan(
        rows=sum(int(h[1]) for h in hours),
        max_seq=max((h[2] for h in hours), default=None),
        newest=max((h[3] for h in hours), default=None),
        slices=slices,
    )


def _slice_query(
    spec: ExportSpec, where: str, params: dict[str, Any], part: Slice | None
) -> tuple[str, dict[str, Any]]:
    """The SELECT for one slice (all rows for None) and its parameters."""
    bounds = [where]
    bound = dict(params)
    if part is not None and part.since is not None:
        bounds.append("occurred_at >= $slice_since")
        bound["slice_since"] = part.since
    if part is not None and part.until is not None:
        bounds.append("occurred_at < $slice_until")
        bound["slice_until"] = part.until
    return _select(spec, " AND ".join(bounds)), bound


class _HashingWriter:
    """A binary sink that keeps the SHA-256 and length of what passes through."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.bytes += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()


class _PipeSink(threading.Thread):
    """Reads what DuckDB writes into a pipe and writes it on, gzipped if asked.

    DuckDB writes each slice with its own ``COPY ... TO '/dev/fd/N'``; the
    write end stays open across them, so the reader sees one stream.
    """

    def __init__(self, target: BinaryIO, gz: bool) -> None:
        super().__init__(name="export-writer", daemon=True)
        self.read_fd, self.write_fd = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # a larger pipe where allowed
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.out = _HashingWriter(target)
        self.gz = gz
        self.error: BaseException | None = None

    @property
    def path(self) -> str:
        return f"/dev/fd/{self.write_fd}"

    def run(self) -> None:
        sink: Any = self.out
        try:
            if self.gz:
                # mtime 0: the same export gives the same bytes, and the same SHA-256.
                sink = gzip.GzipFile(fileobj=self.out, mode="wb", compresslevel=6, mtime=0)
            while chunk := os.read(self.read_fd, PIPE_BYTES):
                sink.write(chunk)
            if self.gz:
                sink.close()
            self.out.flush()
        except BaseException as exc:  # reported by finish(); DuckDB's next write fails
            self.error = exc
        finally:
            os.close(self.read_fd)

    def finish(self) -> None:
        """Close the write end, wait for the rest to be written, raise what went wrong."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        self.join()
        if isinstance(self.error, BrokenPipeError):
            raise OutputClosed("the reader of the export closed it") from self.error
        if self.error is not None:
            raise ExportError(f"writing the export failed: {self.error}") from self.error


def _parts(plan: Plan) -> list[Slice | None]:
    """The slices to write in turn; one None (every row, that is none) when empty."""
    return list(plan.slices) or [None]


def _write_text(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    where: str,
    params: dict[str, Any],
    plan: Plan,
    target: BinaryIO,
    progress: ProgressFn | None,
    stop: threading.Event | None = None,
) -> _HashingWriter:
    """CSV or JSON Lines: DuckDB writes each slice, in turn, into one pipe."""
    sink = _PipeSink(target, spec.gzip)
    sink.start()
    try:
        done = 0
        for i, part in enumerate(_parts(plan)):
            sql, bound = _slice_query(spec, where, params, part)
            conn.execute(
                f"COPY ({sql}) TO '{sink.path}' ({_copy_options(spec, header=i == 0)})", bound
            ).fetchall()
            done += part.rows if part is not None else 0
            _check_stop(stop)
            if progress is not None:
                progress(done, plan.rows)
    finally:
        # The writer's own error, if any, explains DuckDB's and replaces it.
        sink.finish()
    return sink.out


def _write_parquet(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    where: str,
    params: dict[str, Any],
    plan: Plan,
    tmp: Path,
    progress: ProgressFn | None,
    stop: threading.Event | None = None,
) -> None:
    """Parquet: each slice's Arrow batches go into row groups of one file per partition.

    Rows arrive in occurred_at order, so each day's or month's rows are
    contiguous: a partition's file is closed as soon as a later one begins.
    ``tmp`` exists: an empty file, or with --partition-by an empty directory.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    pool = pa.default_memory_pool()
    column = PARTITIONS.get(spec.partition_by or "")
    writers: dict[str, Any] = {}

    def writer_for(key: str | None, schema: Any) -> Any:
        name = "" if key is None else key
        if name not in writers:
            for done in writers.values():
                done.close()
            writers.clear()
            if key is None:
                path = tmp
            else:
                path = tmp / f"{column}={key}" / "data_0.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
            writers[name] = pq.ParquetWriter(path, schema, compression="zstd")
        return writers[name]

    def write(table: Any) -> None:
        if column is None:
            writer_for(None, table.schema).write_table(table, row_group_size=PARQUET_ROW_GROUP)
            return
        keys = table.column(column)
        data = table.drop_columns([column])
        start = 0
        # Runs of equal keys, in order (rows are sorted by time, so keys only grow).
        for run_key, run in itertools.groupby(keys.to_pylist()):
            length = sum(1 for _ in run)
            writer_for(run_key, data.schema).write_table(
                data.slice(start, length), row_group_size=PARQUET_ROW_GROUP
            )
            start += length

    try:
        done = 0
        for part in _parts(plan):
            sql, bound = _slice_query(spec, where, params, part)
            reader = conn.sql(sql, params=bound).to_arrow_reader(PARQUET_ROW_GROUP)
            pending: list[Any] = []
            size = 0
            for batch in reader:
                _check_stop(stop)
                pending.append(batch)
                size += batch.num_rows
                if size >= PARQUET_ROW_GROUP:
                    write(pa.Table.from_batches(pending))
                    pending, size = [], 0
            if pending:
                write(pa.Table.from_batches(pending))
            if part is None and not spec.partition_by and not writers:
                # Nothing selected: still a readable file with the columns.
                writer_for(None, reader.schema)
            del reader, pending
            pool.release_unused()  # what one slice needed goes back before the next
            done += part.rows if part is not None else 0
            _check_stop(stop)
            if progress is not None:
                progress(done, plan.rows)
    finally:
        for writer in writers.values():
            writer.close()


def run_export(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    filters: Filters,
    watermark: int,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
) -> ExportResult:
    """Write the export ``spec`` asks for from the views on ``conn``.

    Raises TargetError when PATH may not be written, ExportInterrupted on
    Ctrl-C or once ``stop`` is set (after removing what it had written),
    OutputClosed when standard output's reader went away, ExportError when
    writing failed.
    """
    try:
        return _run_export(conn, spec, filters, watermark, progress, stop)
    except (KeyboardInterrupt, duckdb.InterruptException):
        raise ExportInterrupted(_interrupted_message(spec)) from None
    except RuntimeError as exc:
        # DuckDB stops a query on Ctrl-C and raises this in place of KeyboardInterrupt.
        if "interrupted" not in str(exc).lower():
            raise
        raise ExportInterrupted(_interrupted_message(spec)) from None


@contextlib.contextmanager
def ctrl_c_stops(conn: duckdb.DuckDBPyConnection) -> Iterator[threading.Event]:
    """An event for ``run_export``'s ``stop`` that Ctrl-C sets, while inside.

    Ctrl-C also interrupts the query running on ``conn``. No KeyboardInterrupt
    is raised: landing wherever Python happens to be (a garbage collection
    callback, a library's cleanup), it could be swallowed or print a traceback;
    the export sees the event at its next step instead. Outside the main
    thread, or with SIGINT ignored, nothing changes.
    """
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (
        signal.SIG_IGN,
        None,
    ):
        yield stop
        return

    def interrupt(signum: int, frame: Any) -> None:
        stop.set()
        conn.interrupt()

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_stop(stop: threading.Event | None) -> None:
    # Between the steps DuckDB does not run (Python's and pyarrow's), a stop
    # asked for by ``ctrl_c_stops`` becomes the KeyboardInterrupt it stands for.
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


def _interrupted_message(spec: ExportSpec) -> str:
    if spec.output == "-":
        return "interrupted"
    return f"interrupted; nothing was written to {spec.output}"


def _run_export(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    filters: Filters,
    watermark: int,
    progress: ProgressFn | None,
    stop: threading.Event | None,
) -> ExportResult:
    where, params = filters.where()
    share = PARQUET_SLICE_SHARE if spec.fmt == "parquet" else 1.0
    plan = plan_export(conn, where, params, share=share)
    if spec.output == "-":
        try:
            sys.stdout.flush()
            _write_text(conn, spec, where, params, plan, sys.stdout.buffer, None, stop)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise OutputClosed("the reader of the export closed it") from None
        return ExportResult(plan.rows)
    final = Path(spec.output)
    manifest = manifest_path(final)
    check_target(spec)
    remove_stale_temps(final)
    try:
        tmp, held = _create_temp(final, directory=bool(spec.partition_by))
    except OSError as exc:
        raise TargetError(f"cannot write in {final.parent}: {exc.strerror}") from None
    try:
        files = _write_export(
            conn, spec, where, params, plan, tmp, held, final.name, progress, stop
        )
        _check_stop(stop)
        # Checked again: a long export leaves time for PATH to change meanwhile.
        check_target(spec)
        _replace(tmp, final)
    except OSError as exc:
        raise ExportError(f"writing {final} failed: {exc.strerror or exc}") from None
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        os.close(held)
    record = {
        "format": MANIFEST_FORMAT,
        "tool": "grantex-archive",
        "tool_version": tool_version(),
        "created_at": datetime.now(timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "export": {
            "path": final.name,
            "format": spec.fmt,
            "gzip": spec.gzip,
            "partition_by": spec.partition_by,
            "columns": list(spec.chosen_columns()),
            "safe_formulas": spec.safe_formulas,
            "order": ["occurred_at", "id"],
        },
        "filters": filters.describe(),
        "rows": plan.rows,
        "watermark": {
            "archive_seq": watermark,
            "max_seq_included": plan.max_seq,
            "newest_occurred_at_included": plan.newest.astimezone(timezone.utc)
            .isoformat()
            .replace("+00:00", "Z")
            if plan.newest is not None
            else None,
        },
        "files": files,
    }
    try:
        _write_atomic(manifest, json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise ExportError(f"writing {manifest} failed: {exc.strerror or exc}") from None
    return ExportResult(plan.rows, files, manifest)


def _write_export(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    where: str,
    params: dict[str, Any],
    plan: Plan,
    tmp: Path,
    held: int,
    name: str,
    progress: ProgressFn | None,
    stop: threading.Event | None,
) -> list[dict[str, Any]]:
    """Write the export into ``tmp`` (its descriptor ``held``); the manifest's file entries."""
    if spec.fmt == "parquet":
        _write_parquet(conn, spec, where, params, plan, tmp, progress, stop)
        if spec.partition_by:
            return _describe_tree(tmp, spec)
        return [_describe_file(tmp, name, spec, plan.rows)]
    with open(held, "wb", closefd=False) as handle:
        written = _write_text(conn, spec, where, params, plan, handle, progress, stop)
        handle.flush()
        os.fsync(held)
    # Hashed on the way out: the file is not read again.
    return [
        {
            "path": name,
            "bytes": written.bytes,
            "rows": plan.rows,
            "sha256": written.digest.hexdigest(),
        }
    ]


def _describe_file(path: Path, name: str, spec: ExportSpec, rows: int | None) -> dict[str, Any]:
    return {
        "path": name,
        "bytes": path.stat().st_size,
        "rows": rows if rows is not None else count_rows(path, spec.fmt, spec.gzip),
        "sha256": sha256_file(path),
    }


def _describe_tree(root: Path, spec: ExportSpec) -> list[dict[str, Any]]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return [_describe_file(p, p.relative_to(root).as_posix(), spec, None) for p in files]


def _replace(tmp: Path, final: Path) -> None:
    """Put ``tmp`` where ``final`` is; an existing file or directory goes only then."""
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def _write_atomic(path: Path, text: str) -> None:
    tmp, fd = _create_temp(path, directory=False)
    try:
        with open(fd, "wb", closefd=False) as handle:
            handle.write(text.encode())
            handle.flush()
            os.fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- where an export goes

# What a temporary name adds to PATH's name: ".NAME.<8 hex>.tmp" (being written)
# or ".NAME.<8 hex>.old" (a replaced partition directory being removed).
_TEMP_TAIL = re.compile(r"[0-9a-f]{8}\.(?:tmp|old)")


def _create_temp(final: Path, directory: bool) -> tuple[Path, int]:
    """A new temporary file (or directory) beside ``final``, and a descriptor holding its lock.

    The lock (``flock``) lasts as long as the descriptor is open, so a process
    that dies, however it dies, leaves a temporary file nobody holds:
    ``remove_stale_temps`` tells those from the files of running exports.
    """
    while True:
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        if directory:
            os.mkdir(tmp)
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Another export's cleaning may have taken the new, not yet locked,
        # file for a stale one and removed it in that instant: then try again.
        if _same_file(tmp, fd):
            return tmp, fd
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        there = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def remove_stale_temps(final: Path) -> list[Path]:
    """Remove what killed exports of ``final`` left beside it; the paths removed.

    Only temporary files and directories of this PATH (and of its manifest)
    that no process holds a lock on: a running export's are left alone.
    """
    prefixes = (f".{final.name}.", f".{manifest_path(final).name}.")
    removed: list[Path] = []
    try:
        names = [entry.name for entry in os.scandir(final.parent)]
    except OSError:
        return removed
    for name in sorted(names):
        if not any(name.startswith(p) and _TEMP_TAIL.fullmatch(name[len(p) :]) for p in prefixes):
            continue
        path = final.with_name(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # gone meanwhile, or a symbolic link: not ours to remove
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held: an export is writing it
                continue
            if not _same_file(path, fd):
                continue
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                shutil.rmtree(path, ignore_errors=True)
            elif stat.S_ISREG(mode):
                path.unlink(missing_ok=True)
            else:
                continue
            removed.append(path)
        finally:
            os.close(fd)
    return removed


def check_target(spec: ExportSpec) -> None:
    """Refuse a PATH this export may not write, or not replace (TargetError says why).

    PATH's directory must exist. PATH and its manifest must not be symbolic
    links. What is already there may be replaced, with ``--force``, only if it
    is a previous export of the same shape: a file (or, with --partition-by, a
    directory holding only the files its manifest lists) with a readable
    ``PATH.manifest.json`` beside it.
    """
    final = Path(spec.output)
    manifest = manifest_path(final)
    parent = final.parent
    try:
        if not stat.S_ISDIR(os.stat(parent).st_mode):
            raise TargetError(f"{parent} is not a directory: give PATH in a directory")
    except FileNotFoundError:
        raise TargetError(f"no directory {parent}: create it first") from None
    except NotADirectoryError:
        raise TargetError(f"{parent} is not a directory: give PATH in a directory") from None
    except OSError as exc:
        raise TargetError(f"cannot use {parent}: {exc.strerror}") from None
    for path in (final, manifest):
        if path.is_symlink():
            raise TargetError(
                f"{path} is a symbolic link; an export does not write through links: "
                "give the path it points to, or another PATH"
            )
    there = os.path.lexists(final)
    if not there and not os.path.lexists(manifest):
        return
    problem = _not_replaceable(final, manifest, spec)
    if problem is not None:
        raise TargetError(f"{problem}: remove it or choose another PATH")
    if not spec.force:
        raise TargetError(f"{final if there else manifest} exists (use --force to replace it)")


def _not_replaceable(final: Path, manifest: Path, spec: ExportSpec) -> str | None:
    """Why what is at ``final`` is not an export that ``spec`` may replace; None if it is."""
    shape = "a directory (--partition-by)" if spec.partition_by else "a file"
    if os.path.lexists(final):
        mode = os.lstat(final).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            return f"{final} is not a regular file or directory"
        if stat.S_ISDIR(mode) != bool(spec.partition_by):
            kind = "a directory" if stat.S_ISDIR(mode) else "a file"
            return f"{final} is {kind}, and this export would be {shape}"
        if not os.path.lexists(manifest):
            return f"{final} exists and is not an export (no {manifest.name} beside it)"
    try:
        record = read_manifest(manifest)
    except VerifyError as exc:
        return f"{manifest} is not a readable export manifest ({exc})"
    export = record["export"]
    if export["path"] != final.name:
        return f"{manifest} describes {export['path']!r}, not {final.name!r}"
    if bool(export["partition_by"]) != bool(spec.partition_by):
        was = "a partitioned directory" if export["partition_by"] else "a file"
        return f"{final} was exported as {was}, and this export would be {shape}"
    if spec.partition_by and os.path.lexists(final):
        listed = {entry["path"] for entry in record["files"]}
        for name in _tree_entries(final):
            if name not in listed:
                return f"{final} holds {name}, which its manifest does not list"
    return None


def _tree_entries(root: Path) -> Iterator[str]:
    """Every file, link or other non-directory under ``root``, relative, in order.

    Links to directories are entries too: they are never followed.
    """
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        for name in sorted(files + [d for d in dirs if (here / d).is_symlink()]):
            yield (here / name).relative_to(root).as_posix()
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())


def _sql_text(value: str) -> str:
    return value.replace("'", "''")


def count_rows(path: Path, fmt: str, gz: bool) -> int:
    """Data rows in one export file, read back independently of the writer."""
    if fmt == "parquet":
        conn = duckdb.connect()
        try:
            return int(
                conn.execute(
                    f"SELECT sum(num_rows) FROM parquet_file_metadata('{_sql_text(str(path))}')"
                ).fetchall()[0][0]
                or 0
            )
        finally:
            conn.close()
    opener: Callable[..., Any] = gzip.open if gz else open
    if fmt == "jsonl":
        with opener(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    with opener(path, "rb") as handle:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        reader = csv.reader(text)
        next(reader, None)  # the header
        return sum(1 for _ in reader)


_SHA256 = re.compile(r"[0-9a-f]{64}")


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


def check_manifest(record: Any) -> dict[str, Any]:
    """``record`` if it has the structure of a manifest; VerifyError naming the first fault."""
    if not isinstance(record, dict):
        raise VerifyError(f"the manifest is not a JSON object (it is {_type_name(record)})")
    version = _field(record, "format")
    if version != MANIFEST_FORMAT or isinstance(version, bool):
        raise VerifyError(
            f"manifest format {version!r} is not one this version reads ({MANIFEST_FORMAT})"
        )
    export = _field(record, "export")
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
    rows = _count(_field(record, "rows"), "rows")
    files = _field(record, "files")
    if not isinstance(files, list):
        raise VerifyError(f"the manifest's 'files' must be a list, not {_type_name(files)}")
    seen: set[str] = set()
    for i, entry in enumerate(files):
        where = f"files[{i}]"
        if not isinstance(entry, dict):
            raise VerifyError(f"the manifest's '{where}' must be an object, not {entry!r}")
        path = _field(entry, "path", f"{where}.")
        if not isinstance(path, str):
            raise VerifyError(f"the manifest's '{where}.path' must be a string, not {path!r}")
        parts = PurePosixPath(path).parts
        if not parts or path.startswith("/") or any(p in (".", "..") for p in path.split("/")):
            raise VerifyError(
                f"the manifest's '{where}.path' must be a relative path inside the export, "
                f"not {path!r}"
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


def _read_rows(path: Path, fmt: str, gz: bool) -> int:
    """``count_rows``, with a file that cannot be read as what it claims to be a VerifyError."""
    kind = f"{'gzip ' if gz else ''}{fmt}"
    try:
        return count_rows(path, fmt, gz)
    except (OSError, EOFError, ValueError, csv.Error, zlib.error, duckdb.Error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VerifyError(f"{path} cannot be read as {kind}: {reason}") from None


def verify_export(path: Path) -> dict[str, Any]:
    """Check an export against its manifest; raises VerifyError on any difference.

    The manifest must be well formed and list exactly the files at PATH (PATH
    itself for a file export; every file under the directory for a partitioned
    one); each file's SHA-256 and the rows read from it must match.
    """
    manifest = manifest_path(path)
    record = read_manifest(manifest)
    export = record["export"]
    fmt, gz = export["format"], export["gzip"]
    partitioned = export["partition_by"] is not None
    if export["path"] != path.name:
        raise VerifyError(f"{manifest} describes {export['path']!r}, not {path.name!r}")
    listed = [entry["path"] for entry in record["files"]]
    if partitioned:
        if not path.is_dir():
            raise VerifyError(f"{path} is missing or not a directory")
        present = set(_tree_entries(path))
        extra = sorted(present - set(listed))
        if extra:
            raise VerifyError(f"{path / extra[0]} is not in the manifest")
    else:
        if not path.is_file():
            raise VerifyError(f"{path} is missing")
        if listed != [path.name]:
            raise VerifyError(
                f"{manifest} must list exactly {path.name}, and lists "
                f"{', '.join(map(repr, listed)) or 'no files'}"
            )
    total = 0
    for entry in record["files"]:
        target = path / entry["path"] if partitioned else path
        if target.is_symlink() or not target.is_file():
            raise VerifyError(f"{target} is missing")
        digest = sha256_file(target)
        if digest != entry["sha256"]:
            raise VerifyError(f"{target}: SHA-256 is {digest}, the manifest says {entry['sha256']}")
        rows = _read_rows(target, fmt, gz)
        if rows != entry["rows"]:
            raise VerifyError(f"{target}: {rows} rows, the manifest says {entry['rows']}")
        total += rows
    if total != record["rows"]:
        raise VerifyError(f"{path}: {total} rows in all, the manifest says {record['rows']}")
    return dict(record)


def write_query_csv(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, Any],
    target: Path,
    crlf: bool = True,
) -> None:
    """Write a query's result as CSV with the export rules (the writer reports share).

    DuckDB writes it: RFC 4180 quoting, CRLF (LF unless ``crlf``: for a pipe
    or a terminal), NULL as an empty cell and an
    empty string as ``""``; timestamps become ISO 8601 UTC with ``Z`` and
    nested values compact JSON, as in an export.
    """
    description = conn.execute(f"SELECT * FROM ({sql}) LIMIT 0", params).description or []
    aliases = [f"c{i}" for i in range(len(description))]
    exprs = []
    for alias, (name, kind, *_rest) in zip(aliases, description, strict=True):
        label = '"' + str(name).replace('"', '""') + '"'
        type_name = str(kind).upper()
        if type_name.startswith("TIMESTAMP"):
            exprs.append(f"{_ISO.format(c=alias)} AS {label}")
        elif type_name.endswith("]") or type_name.startswith(("STRUCT", "MAP", "UNION")):
            exprs.append(f"CAST(to_json({alias}) AS VARCHAR) AS {label}")
        else:
            exprs.append(f"{alias} AS {label}")
    select = f"SELECT {', '.join(exprs)} FROM ({sql}) AS q({', '.join(aliases)})"
    options = CSV_OPTIONS if crlf else CSV_OPTIONS.replace("'\\r\\n'", "'\\n'")
    conn.execute(f"COPY ({select}) TO '{_sql_text(str(target))}' ({options})", params).fetchall()
