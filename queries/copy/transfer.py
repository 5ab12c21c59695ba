"""Archive rows into Parquet files: the typed SELECT, the cast, the durable rename.

An ADBC stream of archive rows is cast to the copy's types by DuckDB and
written as zstd Parquet under a temporary name; :func:`publish` syncs the
finished file and renames it into place, so a file under its final name is
always complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb

from ingest.database import first_line
from ingest.files import sync_directory

from .columns import DERIVED_COLUMNS, EVENT_COLUMNS, TIME_TYPES, Columns
from .errors import AnalyticsError
from .manifest import Segment
from .reader import ArchiveReader
from .sql import parquet, sql_text

# Rows per segment on a full build.
SEGMENT_ROWS = 1_000_000
# Parallel archive readers during a full build (one per core here).
TRANSFER_LANES = 2

# Called with the rows copied so far and an upper bound of the rows to copy.
ProgressFn = Callable[[int, int], None]

# A value of each type that pins the SQLite driver's guess of a column's type.
_PROBES = {"BIGINT": "0", "DOUBLE": "0.5", "BOOLEAN": "0"}
_TEXT_PROBE = "''"  # text: SQLite keeps times and dates as text too


def typed_select(table: str, columns: Columns, where: str, sqlite: bool) -> str:
    """SELECT for the archive; on SQLite a typed first row pins the driver's type guess.

    The SQLite driver infers column types from the first batch: a column that is
    NULL throughout it would become int64 and fail on the first text value.
    """
    names = ", ".join(name for name, _ in columns)
    if not sqlite:
        return f"SELECT {names} FROM {table} WHERE {where}"
    probe = ", ".join(
        f"{_PROBES.get(kind, _TEXT_PROBE)} AS {name}"
        if name != columns[0][0]
        else f"NULL AS {name}"
        for name, kind in columns
    )
    return f"SELECT {probe} UNION ALL SELECT {names} FROM {table} WHERE {where}"


def duck_projection(columns: Columns) -> str:
    """Cast what the driver produced to the copy's types (SQLite times are text)."""
    parts = []
    for name, kind in columns:
        if kind in TIME_TYPES:
            parts.append(f"CAST(CAST({name} AS TIMESTAMP) AS TIMESTAMPTZ) AS {name}")
        else:
            parts.append(f"CAST({name} AS {kind}) AS {name}")
    return ", ".join(parts)


def publish(tmp: Path, final: Path) -> None:
    """Rename the finished file ``tmp`` to ``final``, durably.

    DuckDB writes the file; its data is synced before the rename and the
    directory after it, so a manifest never names a file a crash could
    leave short. (``ingest.files.atomic_write_bytes`` does the same for
    data held in memory.)
    """
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    sync_directory(final.parent)


def copy_table(
    reader: ArchiveReader,
    conn: duckdb.DuckDBPyConnection,
    table: str,
    columns: Columns,
    where: str,
    tmp: Path,
) -> None:
    """Stream rows of an archive table into the Parquet file ``tmp``."""
    key = columns[0][0]
    stream = reader.stream(typed_select(table, columns, where, reader.sqlite))
    view = f"incoming_{secrets.token_hex(4)}"
    select = f"SELECT {duck_projection(columns)} FROM {view} WHERE {key} IS NOT NULL"
    if table == "events":
        derived = ", ".join(f"{sql} AS {name}" for name, _, sql in DERIVED_COLUMNS)
        select = f"SELECT *, {derived} FROM ({select})"
    try:
        conn.from_arrow(stream).create_view(view)
        conn.execute(
            f"COPY ({select}) "
            f"TO '{sql_text(str(tmp))}' (FORMAT parquet, COMPRESSION zstd, "
            "ROW_GROUP_SIZE 100000)"
        ).fetchall()
    except duckdb.Error as exc:
        tmp.unlink(missing_ok=True)
        raise AnalyticsError(f"copying {table} failed: {first_line(exc)}") from None
    finally:
        stream.close()
        with contextlib.suppress(duckdb.Error):
            conn.execute(f"DROP VIEW IF EXISTS {view}").fetchall()


def segment_name(lo: int, hi: int) -> str:
    """A new segment's name in the copy: its seq range, and a random part."""
    return f"events/seq-{lo:012d}-{hi:012d}-{secrets.token_hex(4)}.parquet"


def write_segment(
    directory: Path, reader: ArchiveReader, conn: duckdb.DuckDBPyConnection, where: str
) -> Segment | None:
    """Copy the archive's events matching ``where`` into a new segment (None: no rows)."""
    tmp = directory / f"events/part-{secrets.token_hex(8)}.parquet.tmp"
    copy_table(reader, conn, "events", EVENT_COLUMNS, where, tmp)
    count, lo, hi = conn.execute(
        f"SELECT count(*), min(seq), max(seq) FROM {parquet(tmp)}"
    ).fetchall()[0]
    if not count:
        tmp.unlink()
        return None
    final = segment_name(lo, hi)
    publish(tmp, directory / final)
    return Segment(final, int(count), int(lo), int(hi))


def copy_ranges(
    db_url: str,
    directory: Path,
    first: tuple[ArchiveReader, duckdb.DuckDBPyConnection],
    previous: int,
    archive_max: int,
    progress: ProgressFn | None,
) -> list[Segment]:
    """Copy rows above ``previous`` into segments, in seq ranges of SEGMENT_ROWS.

    Several ranges (a full build) go through TRANSFER_LANES readers at once:
    one ADBC stream is bound by the driver's single thread, while DuckDB's
    Parquet writer waits. ``first`` is the reader and connection of the first
    lane; the others open their own reader and a cursor of that connection.
    """
    total = archive_max - previous  # an upper bound: seq can have gaps
    ranges = [
        (lo, min(lo + SEGMENT_ROWS, archive_max))
        for lo in range(previous, archive_max, SEGMENT_ROWS)
    ]
    if not ranges:
        return []
    done: list[Segment] = []
    lock = threading.Lock()
    pending = list(reversed(ranges))

    def lane(reader: ArchiveReader, conn: duckdb.DuckDBPyConnection) -> None:
        while True:
            with lock:
                if not pending:
                    return
                lo, hi = pending.pop()
            segment = write_segment(directory, reader, conn, f"seq > {lo} AND seq <= {hi}")
            with lock:
                if segment is not None:
                    done.append(segment)
                if progress is not None:
                    progress(sum(s.rows for s in done), total)

    reader, duck = first
    extra = min(TRANSFER_LANES, len(ranges)) - 1
    readers = [ArchiveReader(db_url) for _ in range(extra)]
    try:
        with ThreadPoolExecutor(max_workers=extra + 1) as pool:
            futures = [pool.submit(lane, reader, duck)]
            futures += [pool.submit(lane, r, duck.cursor()) for r in readers]
            for future in futures:
                future.result()
    finally:
        for extra_reader in readers:
            extra_reader.close()
    return sorted(done, key=lambda s: s.min_seq)
