"""DuckDB sessions over the analytics copy: the views, the macros, read-only SQL."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from .copy import AnalyticsCopy, Locate, Manifest, view_statements

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


# Linux names each open file of a process in /proc/self/fd. Views that read the
# copy's files through descriptors opened once keep reading the same files
# after a refresh renames or deletes them: a session sees one manifest's
# snapshot for as long as it lives, however many refreshes happen meanwhile.
FD_DIR = Path("/proc/self/fd")
# Reading the manifest and opening its files races with a refresh retiring
# them; the manifest is read again this many times before plain paths are used.
PIN_ATTEMPTS = 10
# Without descriptors (not Linux), a query whose file a refresh retired is
# run again over a newly read manifest, this many times.
RELOADS = 3


class QueryError(Exception):
    """DuckDB rejected a query; the message is DuckDB's first line."""


class ReadOnlyError(QueryError):
    """Analyst SQL tried something other than reading."""


class Session:
    """An in-memory DuckDB connection whose views read the copy's Parquet files."""

    def __init__(self, copy: AnalyticsCopy, threads: int = 2, memory_limit: str = "1GB") -> None:
        self.copy = copy
        self._pinned: list[int] = []
        self.conn = duckdb.connect(
            config={
                "threads": threads,
                "memory_limit": memory_limit,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": True,
            }
        )
        self.conn.execute("SET TimeZone = 'UTC'").fetchall()
        # A large sort spills here rather than into the working directory.
        self._spill = Path(tempfile.gettempdir()) / f"grantex-archive-{secrets.token_hex(6)}"
        self.conn.execute(f"SET temp_directory = '{_sql_text(str(self._spill))}'").fetchall()
        for macro in MACROS:
            self.conn.execute(macro).fetchall()
        self._load_views()

    def _load_views(self) -> None:
        manifest = self.copy.manifest()
        locate = None
        for _ in range(PIN_ATTEMPTS):
            try:
                locate = self._pin(manifest)
                break
            except FileNotFoundError:
                manifest = self.copy.manifest()
        for statement in view_statements(self.copy.directory, manifest, locate):
            self.conn.execute(statement).fetchall()

    def _pin(self, manifest: Manifest | None) -> Locate | None:
        """Open every file ``manifest`` lists; where to read each through its descriptor.

        Raises FileNotFoundError when a refresh has already retired one of them.
        """
        if manifest is None or not FD_DIR.is_dir():
            return None
        opened: dict[str, int] = {}
        try:
            for name in manifest.files():
                opened[name] = os.open(self.copy.directory / name, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            for fd in opened.values():
                os.close(fd)
            raise
        # Descriptors stay open until the session closes, so that no number is
        # reused for another file while DuckDB may still cache what it read.
        self._pinned += opened.values()
        paths = {name: FD_DIR / str(fd) for name, fd in opened.items()}
        return paths.__getitem__

    def close(self) -> None:
        self.conn.close()
        shutil.rmtree(self._spill, ignore_errors=True)
        for fd in self._pinned:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pinned = []

    def run(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``work``; if a refresh retired a file under it, reload the views and retry."""
        for _ in range(RELOADS):
            try:
                return work(self.conn)
            except duckdb.IOException as exc:
                # Perhaps a file gone missing: a refresh has retired it since the
                # views were made (only where files cannot be pinned).
                if self._pinned:
                    raise QueryError(first_line(exc)) from None
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


def _sql_text(value: str) -> str:
    return value.replace("'", "''")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
