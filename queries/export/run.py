"""Running an export: plan it, write it under a locked temporary name, rename it, add the manifest.

Every file is written under a temporary name (``ingest.files.locked_temp``),
locked while it is written, synced, and renamed into place once complete; the
next export of the same PATH removes the temporary files that killed exports
left (those nobody holds a lock on). Ctrl-C, or the ``stop`` event, removes
what had been written and raises ExportInterrupted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb

from ingest import files

from .bound import RowBound
from .manifest import manifest_path, manifest_record, sha256_file, write_manifest
from .parquet import write_parquet
from .plan import PARQUET_SLICE_SHARE, Plan, ProgressFn, check_stop, plan_export
from .spec import (
    ExportError,
    ExportInterrupted,
    ExportResult,
    ExportSpec,
    Filters,
    OutputClosed,
    TargetError,
)
from .target import check_target, remove_stale_temps
from .text import write_text
from .verify import count_rows

# DuckDB's memory for an export session; beyond it, sorts spill to disk.
EXPORT_MEMORY_LIMIT = "320MB"


def run_export(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    filters: Filters,
    watermark: int,
    progress: ProgressFn | None = None,
    stop: threading.Event | None = None,
    chain: dict[str, Any] | None = None,
    bound: dict[str, Any] | None = None,
    rows: RowBound | None = None,
) -> ExportResult:
    """Write the export ``spec`` asks for from the views on ``conn``.

    ``chain`` is the archive's chain head when the rows were read and ``bound`` which rows
    they were (``queries.export.bound``), for the manifest. ``rows`` narrows the export to
    those rows (re-deriving an export from its archive).

    Raises TargetError when PATH may not be written, ExportInterrupted on
    Ctrl-C or once ``stop`` is set (after removing what it had written),
    OutputClosed when standard output's reader went away, ExportError when
    writing failed.
    """
    try:
        return _run_export(conn, spec, filters, watermark, progress, stop, chain, bound, rows)
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
    chain: dict[str, Any] | None = None,
    bound: dict[str, Any] | None = None,
    rows: RowBound | None = None,
) -> ExportResult:
    where, params = filters.where()
    if rows is not None:
        narrowed, extra = rows.where()
        where, params = f"({where}) AND {narrowed}", {**params, **extra}
    share = PARQUET_SLICE_SHARE if spec.fmt == "parquet" else 1.0
    plan = plan_export(conn, where, params, share=share)
    if spec.output == "-":
        try:
            sys.stdout.flush()
            write_text(conn, spec, where, params, plan, sys.stdout.buffer, None, stop)
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise OutputClosed("the reader of the export closed it") from None
        return ExportResult(plan.rows)
    final = Path(spec.output)
    written = _write_in_place(conn, spec, where, params, plan, progress, stop)
    manifest = manifest_path(final)
    try:
        record = manifest_record(spec, filters, plan, watermark, written, chain, bound)
        write_manifest(manifest, record)
    except OSError as exc:
        raise ExportError(f"writing {manifest} failed: {exc.strerror or exc}") from None
    return ExportResult(plan.rows, written, manifest)


def _write_in_place(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    where: str,
    params: dict[str, Any],
    plan: Plan,
    progress: ProgressFn | None,
    stop: threading.Event | None,
) -> list[dict[str, Any]]:
    """Write the export under a locked temporary name and rename it to PATH; its file entries."""
    final = Path(spec.output)
    check_target(spec)
    remove_stale_temps(final)
    try:
        tmp, held = files.locked_temp(final, directory=bool(spec.partition_by))
    except OSError as exc:
        raise TargetError(f"cannot write in {final.parent}: {exc.strerror}") from None
    try:
        written = _write_export(conn, spec, where, params, plan, tmp, held, progress, stop)
        check_stop(stop)
        # Checked again: a long export leaves time for PATH to change meanwhile.
        check_target(spec)
        files.replace(tmp, final)
    except OSError as exc:
        raise ExportError(f"writing {final} failed: {exc.strerror or exc}") from None
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        os.close(held)
    return written


def _write_export(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    where: str,
    params: dict[str, Any],
    plan: Plan,
    tmp: Path,
    held: int,
    progress: ProgressFn | None,
    stop: threading.Event | None,
) -> list[dict[str, Any]]:
    """Write the export into ``tmp`` (its descriptor ``held``), synced; the manifest's entries."""
    name = Path(spec.output).name
    if spec.fmt == "parquet":
        write_parquet(conn, spec, where, params, plan, tmp, progress, stop)
        files.sync_tree(tmp)
        if spec.partition_by:
            return _describe_tree(tmp, spec)
        return [_describe_file(tmp, name, spec, plan.rows)]
    with open(held, "wb", closefd=False) as handle:
        written = write_text(conn, spec, where, params, plan, handle, progress, stop)
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
    found = sorted(p for p in root.rglob("*") if p.is_file())
    return [_describe_file(p, p.relative_to(root).as_posix(), spec, None) for p in found]
