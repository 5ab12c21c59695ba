"""DuckDB sessions over the analytics copy: the views, the macros, read-only SQL."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import duckdb

from .copy import AnalyticsCopy, view_statements

T = TypeVar("T")

# Available to every report and to analyst SQL.
MACROS = (
    # The calendar period (UTC) of a timestamp for --by day|week|month, else NULL.
    "CREATE OR REPLACE MACRO period(ts, unit) AS CASE unit "
    "WHEN 'day' THEN CAST(date_trunc('day', ts) AS DATE) "
    "WHEN 'week' THEN CAST(date_trunc('week', ts) AS DATE) "
    "WHEN 'month' THEN CAST(date_trunc('month', ts) AS DATE) END",
)

_EXPLAINED = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\([^)]*\)\s*)?(.*)$", re.I | re.S)

# Statement types analyst SQL may run; everything else could write somewhere.
READ_ONLY_STATEMENTS = frozenset({duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN})


class QueryError(Exception):
    """DuckDB rejected a query; the message is DuckDB's first line."""


class ReadOnlyError(QueryError):
    """Analyst SQL tried something other than reading."""


class Session:
    """An in-memory DuckDB connection whose views read the copy's Parquet files."""

    def __init__(self, copy: AnalyticsCopy, threads: int = 2, memory_limit: str = "1GB") -> None:
        self.copy = copy
        self.conn = duckdb.connect(
            config={
                "threads": threads,
                "memory_limit": memory_limit,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": True,
            }
        )
        self.conn.execute("SET TimeZone = 'UTC'").fetchall()
        for macro in MACROS:
            self.conn.execute(macro).fetchall()
        self._load_views()

    def _load_views(self) -> None:
        for statement in view_statements(self.copy.directory, self.copy.manifest()):
            self.conn.execute(statement).fetchall()

    def close(self) -> None:
        self.conn.close()

    def run(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``work``; if a refresh retired a file under it, reload the views once."""
        try:
            return work(self.conn)
        except duckdb.IOException:
            # A file gone missing: a refresh has retired it since the views were made.
            pass
        except duckdb.Error as exc:
            raise QueryError(first_line(exc)) from None
        self._load_views()
        try:
            return work(self.conn)
        except duckdb.Error as exc:
            raise QueryError(first_line(exc)) from None

    def stream(
        self, sql: str, params: Mapping[str, Any], chunk: int = 10_000
    ) -> tuple[list[str], Iterator[tuple[Any, ...]]]:
        """Column names and the rows of ``sql``, fetched a chunk at a time."""

        def start(
            conn: duckdb.DuckDBPyConnection,
        ) -> tuple[duckdb.DuckDBPyConnection, list[str], list[tuple[Any, ...]]]:
            result = conn.execute(sql, dict(params))
            columns = [d[0] for d in result.description] if result.description else []
            return result, columns, result.fetchmany(chunk)

        result, columns, first = self.run(start)

        def rows() -> Iterator[tuple[Any, ...]]:
            batch = first
            while batch:
                yield from batch
                try:
                    batch = result.fetchmany(chunk)
                except duckdb.Error as exc:
                    raise QueryError(first_line(exc)) from None

        return columns, rows()


def check_read_only(sql: str, conn: duckdb.DuckDBPyConnection) -> duckdb.StatementType:
    """Refuse anything but one SELECT (or EXPLAIN of one) before it runs; its type."""
    try:
        statements = conn.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(first_line(exc)) from None
    if not statements:
        raise QueryError("no SQL statement given")
    if len(statements) > 1:
        raise QueryError(f"one statement at a time, got {len(statements)}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE runs its statement: only a SELECT may follow.
        inner = _EXPLAINED.match(statements[0].query)
        try:
            inner_kinds = [s.type for s in conn.extract_statements(inner.group(1))] if inner else []
        except duckdb.Error:
            inner_kinds = []
        if inner_kinds != [duckdb.StatementType.SELECT]:
            kind = duckdb.StatementType.INVALID
    if kind not in READ_ONLY_STATEMENTS:
        name = (
            "EXPLAIN of anything but SELECT"
            if kind == duckdb.StatementType.INVALID
            else (str(kind).rsplit(".", 1)[-1] + " statements")
        )
        raise ReadOnlyError(
            f"the analytics views are read-only: {name} are not allowed "
            "(use SELECT; the archive is changed only by ingest)"
        )
    return kind


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
