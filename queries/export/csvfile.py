"""CSV, written one way for every command: DuckDB's ``COPY ... (FORMAT csv)``.

``export --format csv``, ``report`` and ``sql`` with ``--format csv``, and
the rows other commands print as CSV (``status``) all go through
:func:`copy_csv`, so they quote, end lines and write NULL alike:

- RFC 4180: a header row; a field holding a comma, a quote, a line break (or
  otherwise needing it) is quoted, its quotes doubled; UTF-8.
- NULL is an empty field, unquoted; the empty string is ``""``. The two stay
  apart when read back.
- Lines end with CRLF in files, LF on a pipe or a terminal (the caller says
  which: ``queries.render.crlf_for``).

DuckDB writes a query's rows about four times as fast as Python's ``csv``
module fed from the same query. Rows that exist only as Python values are
handed to DuckDB as text (the caller formats them) through Arrow.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import duckdb

from .columns import timestamp_text

# RFC 4180: CRLF line ends, quotes doubled; NULL is an empty cell, '' is "".
CSV_OPTIONS = "FORMAT csv, HEADER true, NEW_LINE '\\r\\n'"
# Rows handed to DuckDB at a time by write_rows_csv.
ROWS_PER_BATCH = 10_000


def csv_options(crlf: bool = True, header: bool = True) -> str:
    """The COPY options for CSV: CRLF or LF line ends, with or without the header row."""
    options = CSV_OPTIONS if crlf else CSV_OPTIONS.replace("'\\r\\n'", "'\\n'")
    return options if header else options.replace("HEADER true", "HEADER false")


def sql_text(value: str) -> str:
    """``value`` for the inside of a SQL string literal."""
    return value.replace("'", "''")


def _label(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def copy_csv(
    conn: duckdb.DuckDBPyConnection,
    select: str,
    params: dict[str, Any],
    target: str,
    crlf: bool = True,
    header: bool = True,
) -> None:
    """Write the rows of ``select`` to ``target`` (a path, or ``/dev/fd/N``) as CSV."""
    conn.execute(
        f"COPY ({select}) TO '{sql_text(target)}' ({csv_options(crlf, header)})", params
    ).fetchall()


def write_query_csv(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    params: dict[str, Any],
    target: Path,
    crlf: bool = True,
) -> None:
    """Write a query's result as CSV (the ``report`` and ``sql`` commands).

    Timestamps become ISO 8601 UTC with ``Z`` and nested values compact JSON,
    as in an export; everything else is as DuckDB writes it.
    """
    description = conn.execute(f"SELECT * FROM ({sql}) LIMIT 0", params).description or []
    aliases = [f"c{i}" for i in range(len(description))]
    exprs = []
    for alias, (name, kind, *_rest) in zip(aliases, description, strict=True):
        type_name = str(kind).upper()
        if type_name.startswith("TIMESTAMP"):
            expr = timestamp_text(alias)
        elif type_name.endswith("]") or type_name.startswith(("STRUCT", "MAP", "UNION")):
            expr = f"CAST(to_json({alias}) AS VARCHAR)"
        else:
            expr = alias
        exprs.append(f"{expr} AS {_label(str(name))}")
    select = f"SELECT {', '.join(exprs)} FROM ({sql}) AS q({', '.join(aliases)})"
    copy_csv(conn, select, params, str(target), crlf)


def write_rows_csv(
    out: IO[str],
    columns: Sequence[str],
    rows: Iterable[Sequence[str | None]],
    crlf: bool = True,
) -> int:
    """Write rows of text (None for NULL) to ``out`` as CSV; returns how many.

    DuckDB reads the rows through Arrow, a batch at a time, and writes them
    to a temporary file that is then copied to ``out``.
    """
    import pyarrow as pa

    aliases = [f"c{i}" for i in range(len(columns))]
    schema = pa.schema([(alias, pa.string()) for alias in aliases])
    count = 0

    def batches() -> Iterator[Any]:
        nonlocal count
        iterator = iter(rows)
        while chunk := list(itertools.islice(iterator, ROWS_PER_BATCH)):
            count += len(chunk)
            values = list(zip(*chunk, strict=True))
            yield pa.RecordBatch.from_arrays(
                [pa.array(column, pa.string()) for column in values], schema=schema
            )

    labels = ", ".join(f"{a} AS {_label(n)}" for a, n in zip(aliases, columns, strict=True))
    conn = duckdb.connect(config={"threads": 1})
    try:
        with tempfile.TemporaryDirectory(prefix="grantex-csv-") as tmp:
            target = Path(tmp) / "rows.csv"
            conn.register("csv_rows", pa.RecordBatchReader.from_batches(schema, batches()))
            copy_csv(conn, f"SELECT {labels} FROM csv_rows", {}, str(target), crlf)
            with open(target, encoding="utf-8", newline="") as handle:
                shutil.copyfileobj(handle, out)
    finally:
        conn.close()
    return count
