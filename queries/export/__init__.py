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

The modules, in the order an export uses them:

- ``columns``: the exportable columns, from the archive's schema.
- ``spec``: what is asked for (``ExportSpec``, ``Filters``), the format from
  PATH's name, the errors.
- ``plan``: the rows in their output form and order, cut into time slices.
- ``csvfile``: the one CSV writer (also for ``report``, ``sql``, ``status``).
- ``text`` and ``parquet``: writing CSV / JSON Lines, and Parquet.
- ``target``: what PATH may be and what ``--force`` may replace.
- ``manifest`` and ``verify``: the manifest, and checking files against it.
- ``bound``: which archive rows an export read; ``rederive``: the export made
  again from the archive, for ``verify-export --archive``.
- ``run``: an export from start to end; ``api``: ``export()`` for Python.
"""

from __future__ import annotations

from .api import check_combination, export
from .bound import RowBound, bound_of
from .columns import ALL_COLUMNS, COLUMNS, DEFAULT_COLUMNS, EXTRA_COLUMNS, TEXT_COLUMNS
from .csvfile import CSV_OPTIONS, copy_csv, csv_options, write_query_csv, write_rows_csv
from .manifest import (
    MANIFEST_FORMAT,
    MANIFEST_SUFFIX,
    check_manifest,
    manifest_path,
    read_manifest,
    sha256_file,
    tool_version,
)
from .parquet import PARQUET_ROW_GROUP
from .plan import (
    FORMULA_START,
    PARQUET_SLICE_SHARE,
    SLICE_BYTES,
    SLICE_ROWS,
    Plan,
    ProgressFn,
    Slice,
    plan_export,
)
from .run import EXPORT_MEMORY_LIMIT, ctrl_c_stops, run_export
from .spec import (
    FORMATS,
    PARTITIONS,
    SUFFIXES,
    ExportError,
    ExportInterrupted,
    ExportResult,
    ExportSpec,
    Filters,
    OutputClosed,
    SuffixError,
    TargetError,
    VerifyError,
    check_columns,
    check_suffix,
    format_for,
)
from .target import check_target, remove_stale_temps
from .text import PIPE_BYTES
from .verify import count_rows, verify_export

__all__ = [
    "ALL_COLUMNS",
    "COLUMNS",
    "CSV_OPTIONS",
    "DEFAULT_COLUMNS",
    "EXPORT_MEMORY_LIMIT",
    "EXTRA_COLUMNS",
    "FORMATS",
    "FORMULA_START",
    "MANIFEST_FORMAT",
    "MANIFEST_SUFFIX",
    "PARQUET_ROW_GROUP",
    "PARQUET_SLICE_SHARE",
    "PARTITIONS",
    "PIPE_BYTES",
    "SLICE_BYTES",
    "SLICE_ROWS",
    "SUFFIXES",
    "TEXT_COLUMNS",
    "ExportError",
    "ExportInterrupted",
    "ExportResult",
    "ExportSpec",
    "Filters",
    "OutputClosed",
    "Plan",
    "ProgressFn",
    "RowBound",
    "Slice",
    "SuffixError",
    "TargetError",
    "VerifyError",
    "bound_of",
    "check_columns",
    "check_combination",
    "check_manifest",
    "check_suffix",
    "check_target",
    "copy_csv",
    "count_rows",
    "csv_options",
    "ctrl_c_stops",
    "export",
    "format_for",
    "manifest_path",
    "plan_export",
    "read_manifest",
    "remove_stale_temps",
    "run_export",
    "sha256_file",
    "tool_version",
    "verify_export",
    "write_query_csv",
    "write_rows_csv",
]
