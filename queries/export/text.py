"""CSV and JSON Lines exports: DuckDB writes each slice into a pipe, a thread hashes it on.

DuckDB writes each slice with its own ``COPY ... TO '/dev/fd/N'``; the write
end stays open across them, so the reader sees one stream, which it hashes,
gzips if asked, and writes to the file (or standard output). No row becomes a
Python object.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import os
import threading
from typing import Any, BinaryIO

import duckdb

from .csvfile import copy_csv
from .plan import Plan, ProgressFn, report_slice, slice_query
from .spec import ExportError, ExportSpec, OutputClosed

# The pipe between DuckDB and the writer thread.
PIPE_BYTES = 1 << 20


class HashingWriter:
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


class PipeSink(threading.Thread):
    """Reads what DuckDB writes into a pipe and writes it on, gzipped if asked."""

    def __init__(self, target: BinaryIO, gz: bool) -> None:
        super().__init__(name="export-writer", daemon=True)
        self.read_fd, self.write_fd = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # a larger pipe where allowed
            fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        self.out = HashingWriter(target)
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


def _copy_slice(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    sql: str,
    params: dict[str, Any],
    target: str,
    first: bool,
) -> None:
    """Write one slice: CSV by the one CSV writer (its header once), JSON Lines by DuckDB."""
    if spec.fmt == "csv":
        copy_csv(conn, sql, params, target, header=first)
        return
    # Chosen columns: one JSON object per line. The whole envelope: the
    # payload as archived, written as it is (no quoting, no escaping).
    options = "FORMAT json" if spec.columns else "FORMAT csv, HEADER false, QUOTE '', ESCAPE ''"
    conn.execute(f"COPY ({sql}) TO '{target}' ({options})", params).fetchall()


def write_text(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    where: str,
    params: dict[str, Any],
    plan: Plan,
    target: BinaryIO,
    progress: ProgressFn | None,
    stop: threading.Event | None = None,
) -> HashingWriter:
    """CSV or JSON Lines: DuckDB writes each slice, in turn, into one pipe."""
    sink = PipeSink(target, spec.gzip)
    sink.start()
    try:
        done = 0
        for i, part in enumerate(plan.parts()):
            sql, bound = slice_query(spec, where, params, part)
            _copy_slice(conn, spec, sql, bound, sink.path, first=i == 0)
            done = report_slice(done, part, plan, progress, stop)
    finally:
        # The writer's own error, if any, explains DuckDB's and replaces it.
        sink.finish()
    return sink.out
