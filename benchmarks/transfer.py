"""How fast rows move from the archive into Parquet, by transfer path.

Run: ``python -m benchmarks.transfer --sqlite sqlite:///ARCHIVE [--pg URL]``
against existing archives (``benchmarks.analytics`` builds one). Each path reads
every column of ``events`` and writes one zstd Parquet file with DuckDB:

- ``adbc``: the ADBC driver's Arrow stream scanned by DuckDB (what the
  analytics copy uses);
- ``python-rows``: the ``sqlite3`` module's rows (``fetchmany``), turned into
  Arrow columns by pyarrow, then written by DuckDB;
- for PostgreSQL (``--pg``): ADBC (binary COPY) against psycopg's rows.

The figure is rows per second over the whole transfer, best of ``--repeat``.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb

from queries.copy import EVENT_COLUMNS, ArchiveReader, _duck_projection, _typed_select

COLUMNS = ", ".join(name for name, _ in EVENT_COLUMNS)


def via_adbc(url: str, out: Path) -> int:
    reader = ArchiveReader(url)
    duck = duckdb.connect()
    try:
        stream = reader.stream(_typed_select("events", EVENT_COLUMNS, "1 = 1", reader.sqlite))
        duck.from_arrow(stream).create_view("incoming")
        duck.execute(
            f"COPY (SELECT {_duck_projection(EVENT_COLUMNS)} FROM incoming "
            f"WHERE seq IS NOT NULL) TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
        ).fetchall()
        stream.close()
        return int(duck.execute(f"SELECT count(*) FROM '{out}'").fetchall()[0][0])
    finally:
        duck.close()
        reader.close()


def _rows_to_parquet(cursor: object, out: Path) -> int:
    import pyarrow as pa

    names = [name for name, _ in EVENT_COLUMNS]
    batches = []
    total = 0
    while True:
        rows = cursor.fetchmany(50_000)  # type: ignore[attr-defined]
        if not rows:
            break
        columns = list(zip(*rows, strict=True))
        batches.append(pa.table({n: list(c) for n, c in zip(names, columns, strict=True)}))
        total += len(rows)
    table = pa.concat_tables(batches, promote_options="permissive")
    duck = duckdb.connect()
    duck.register("incoming", table)
    duck.execute(
        f"COPY (SELECT {_duck_projection(EVENT_COLUMNS)} FROM incoming) "
        f"TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
    ).fetchall()
    duck.close()
    return total


def via_sqlite_rows(url: str, out: Path) -> int:
    conn = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return _rows_to_parquet(conn.execute(f"SELECT {COLUMNS} FROM events"), out)
    finally:
        conn.close()


def via_psycopg_rows(url: str, out: Path) -> int:
    import psycopg

    from queries.copy import _libpq_uri

    with psycopg.connect(_libpq_uri(url)) as conn, conn.cursor(name="bench") as cursor:
        cursor.itersize = 50_000
        cursor.execute(f"SELECT {COLUMNS} FROM events")
        return _rows_to_parquet(cursor, out)


def measure(name: str, fn: Callable[[str, Path], int], url: str, repeat: int) -> float:
    best = 0.0
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            rows = fn(url, Path(tmp) / "out.parquet")
            rate = rows / (time.perf_counter() - started)
        best = max(best, rate)
    print(f"{name:<14} {rows:>10,} rows  {best:>12,.0f} rows/s", flush=True)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sqlite", required=True, help="sqlite:///FILE of an archive")
    parser.add_argument("--pg", help="postgresql+psycopg://... of an archive")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    adbc = measure("sqlite adbc", via_adbc, args.sqlite, args.repeat)
    rows = measure("sqlite rows", via_sqlite_rows, args.sqlite, args.repeat)
    print(f"sqlite: ADBC is {adbc / rows:.1f}x the Python row path")
    if args.pg:
        adbc = measure("pg adbc", via_adbc, args.pg, args.repeat)
        rows = measure("pg rows", via_psycopg_rows, args.pg, args.repeat)
        print(f"postgresql: ADBC is {adbc / rows:.1f}x the Python row path")


if __name__ == "__main__":
    main()
