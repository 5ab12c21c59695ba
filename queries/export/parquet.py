"""Parquet exports: each slice's Arrow batches go into row groups of one file per partition.

Rows arrive in occurred_at order, so each day's or month's rows are
contiguous: a partition's file is closed as soon as a later one begins, and
only one file is open at a time.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import duckdb

from .plan import Plan, ProgressFn, check_stop, report_slice, slice_query
from .spec import PARTITIONS, ExportSpec

PARQUET_ROW_GROUP = 100_000


class PartitionWriters:
    """The one open Parquet file: ``tmp`` itself, or the partition's file under it."""

    def __init__(self, tmp: Path, partition_by: str | None) -> None:
        self.tmp = tmp
        self.column = PARTITIONS.get(partition_by or "")
        self.key: str | None = None
        self.writer: Any = None

    def writer_for(self, key: str | None, schema: Any) -> Any:
        """The writer for partition ``key`` (None: not partitioned); a new key closes the last."""
        import pyarrow.parquet as pq

        if self.writer is None or key != self.key:
            self.close()
            if key is None:
                path = self.tmp
            else:
                path = self.tmp / f"{self.column}={key}" / "data_0.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
            self.key, self.writer = key, pq.ParquetWriter(path, schema, compression="zstd")
        return self.writer

    def write(self, table: Any) -> None:
        """Write ``table``'s rows, each into its partition's file."""
        if self.column is None:
            self.writer_for(None, table.schema).write_table(table, row_group_size=PARQUET_ROW_GROUP)
            return
        keys = table.column(self.column)
        data = table.drop_columns([self.column])
        start = 0
        # Runs of equal keys, in order (rows are sorted by time, so keys only grow).
        for run_key, run in itertools.groupby(keys.to_pylist()):
            length = sum(1 for _ in run)
            self.writer_for(run_key, data.schema).write_table(
                data.slice(start, length), row_group_size=PARQUET_ROW_GROUP
            )
            start += length

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _write_slice(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, Any],
    files: PartitionWriters,
    stop: threading.Event | None,
) -> Any:
    """Write one slice's rows in tables of about a row group; the schema of what it read."""
    import pyarrow as pa

    reader = conn.sql(sql, params=params).to_arrow_reader(PARQUET_ROW_GROUP)
    pending: list[Any] = []
    size = 0
    for batch in reader:
        check_stop(stop)
        pending.append(batch)
        size += batch.num_rows
        if size >= PARQUET_ROW_GROUP:
            files.write(pa.Table.from_batches(pending))
            pending, size = [], 0
    if pending:
        files.write(pa.Table.from_batches(pending))
    return reader.schema


def write_parquet(
    conn: duckdb.DuckDBPyConnection,
    spec: ExportSpec,
    where: str,
    params: dict[str, Any],
    plan: Plan,
    tmp: Path,
    progress: ProgressFn | None,
    stop: threading.Event | None = None,
) -> None:
    """Write the export into ``tmp``: an empty file, or with --partition-by an empty directory."""
    import pyarrow as pa

    pool = pa.default_memory_pool()
    files = PartitionWriters(tmp, spec.partition_by)
    try:
        done = 0
        for part in plan.parts():
            sql, bound = slice_query(spec, where, params, part)
            schema = _write_slice(conn, sql, bound, files, stop)
            if part is None and not spec.partition_by and files.writer is None:
                # Nothing selected: still a readable file with the columns.
                files.writer_for(None, schema)
            pool.release_unused()  # what one slice needed goes back before the next
            done = report_slice(done, part, plan, progress, stop)
    finally:
        files.close()
