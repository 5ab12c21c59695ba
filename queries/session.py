"""DuckDB sessions over the analytics copy: the views, the macros, read-only SQL."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from .copy import AnalyticsCopy, Locate, Manifest, view_statements

T = TypeVar("T")
C = TypeVar("C")

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
    """DuckDB rejected a query; the message is DuckDB's, on one line."""


class QueryInterrupted(KeyboardInterrupt):
    """The user interrupted a running query (Ctrl-C).

    A KeyboardInterrupt, not a QueryError: callers that turn query errors
    into messages let it through, for the command line to exit as an
    interrupted program does.
    """


class ReadOnlyError(QueryError):
    """Analyst SQL tried something other than reading."""


class Session:
    """An in-memory DuckDB connection whose views read the copy's Parquet files."""

    def __init__(
        self,
        copy: AnalyticsCopy,
        threads: int = 2,
        memory_limit: str = "1GB",
        sandbox: bool = False,
    ) -> None:
        self.copy = copy
        self._pinned: list[int] = []
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb-query")
        self.conn = duckdb.connect(
            config={
                "threads": threads,
                "memory_limit": memory_limit,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": True,
            }
        )
        self.conn.execute("SET TimeZone = 'UTC'").fetchall()
        # DuckDB's own progress bar would write into the rows on standard output.
        self.conn.execute("SET enable_progress_bar = false").fetchall()
        # A large sort spills here rather than into the working directory.
        self._spill = Path(tempfile.gettempdir()) / f"grantex-archive-{secrets.token_hex(6)}"
        self.conn.execute(f"SET temp_directory = '{_sql_text(str(self._spill))}'").fetchall()
        # The one place besides the copy where a sandboxed session may write
        # (a CSV rendered by DuckDB); private to this session.
        self.scratch = Path(tempfile.mkdtemp(prefix="grantex-archive-out-"))
        for macro in MACROS:
            self.conn.execute(macro).fetchall()
        self._load_views()
        if sandbox:
            self._lock_down()

    def _lock_down(self) -> None:
        """Let queries touch no file but the copy's, and no setting at all.

        The views read the copy's files through /proc/self/fd links; DuckDB
        resolves a link before checking it, to a path in the copy's directory
        (in trash/, or marked "(deleted)", once a refresh retires the file), so
        allowing the directory keeps them readable. The spill directory is
        DuckDB's own, the scratch directory this session's.
        """
        allowed = [self.copy.directory.resolve(), self.scratch, self._spill]
        listed = ", ".join(f"'{_sql_text(str(path))}/'" for path in allowed)
        self.conn.execute(f"SET allowed_directories = [{listed}]").fetchall()
        self.conn.execute("SET enable_external_access = false").fetchall()
        # Last: from here on no query can change any of the above.
        self.conn.execute("SET lock_configuration = true").fetchall()

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

    @staticmethod
    def _result(future: Future[T]) -> T:
        """The work's result, waited for in short steps.

        A signal may reach any thread of the process, and a wait without a
        timeout does not wake for one that reached another thread: its
        handler (Ctrl-C) would run only once the work is done. Waking every
        0.1 s runs it within that.
        """
        while True:
            try:
                return future.result(timeout=0.1)
            except FutureTimeout:
                continue

    def _interruptible(self, work: Callable[[C], T], target: C) -> T:
        """``work(target)``, with Ctrl-C raised as QueryInterrupted.

        DuckDB looks for Ctrl-C only between its tasks, and a long task (a
        large join under load) may not end for minutes. So the work runs on
        the session's own thread while this one waits in Python, where
        SIGINT is handled at once: it interrupts the connection, again until
        the work has stopped (it may be between two statements).
        """
        future: Future[T] = self._worker.submit(work, target)
        try:
            return self._result(future)
        except KeyboardInterrupt:
            pass
        except duckdb.InterruptException:
            raise QueryInterrupted("interrupted") from None
        except RuntimeError as exc:
            # DuckDB's own check, had it seen the signal first.
            if isinstance(exc, duckdb.Error) or "interrupted" not in str(exc).lower():
                raise
            raise QueryInterrupted("interrupted") from None
        while True:
            self.conn.interrupt()
            try:
                future.exception(timeout=0.05)
                break
            except (FutureTimeout, KeyboardInterrupt):
                continue
        raise QueryInterrupted("interrupted")

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self.conn.close()
        shutil.rmtree(self._spill, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        for fd in self._pinned:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pinned = []

    def run(self, work: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``work``; if a refresh retired a file under it, reload the views and retry."""
        for _ in range(RELOADS):
            try:
                return self._interruptible(work, self.conn)
            except duckdb.IOException as exc:
                # Perhaps a file gone missing: a refresh has retired it since the
                # views were made (only where files cannot be pinned).
                if self._pinned:
                    raise QueryError(duckdb_message(exc)) from None
            except duckdb.Error as exc:
                raise QueryError(duckdb_message(exc)) from None
            self._load_views()
        try:
            return self._interruptible(work, self.conn)
        except duckdb.Error as exc:
            raise QueryError(duckdb_message(exc)) from None

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
                    batch = self._interruptible(lambda r: r.fetchmany(chunk), result)
                except duckdb.Error as exc:
                    raise QueryError(duckdb_message(exc)) from None

        return columns, rows()


def check_read_only(sql: str, conn: duckdb.DuckDBPyConnection) -> duckdb.StatementType:
    """Refuse anything but one SELECT (or EXPLAIN of one) before it runs; its type."""
    try:
        statements = conn.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(duckdb_message(exc)) from None
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


def bare_statement(sql: str) -> str:
    """One statement's text, ready to be wrapped in a subquery.

    Trailing semicolons go (only those the tokenizer calls operators: one in
    a string, a quoted name or a comment stays), and a new line ends the text
    so that a closing ``--`` comment cannot swallow what a caller appends.
    Call it on what check_read_only accepted: every such semicolon is trailing.
    """
    chars = list(sql)
    for start, kind in duckdb.tokenize(sql):
        if kind == duckdb.token_type.operator and sql[start] == ";":
            chars[start] = " "
    return "".join(chars).strip() + "\n"


def _sql_text(value: str) -> str:
    return value.replace("'", "''")


def duckdb_message(exc: BaseException) -> str:
    """DuckDB's message on one line: the error and its hints.

    DuckDB puts hints ("Candidate bindings: ...", "Did you mean ...?") on the
    lines after the first, then, after a blank line, the query's line with
    carets under the place. That quote is left out: the query DuckDB saw is
    the analyst's wrapped in the command's own SQL, which would only confuse.
    """
    message = str(exc).strip().split("\n\n", 1)[0]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


@contextlib.contextmanager
def rows_of(
    copy: AnalyticsCopy, sql: str, params: dict[str, Any]
) -> Iterator[tuple[list[str], Iterator[tuple[Any, ...]]]]:
    """The columns and (streamed) rows of ``sql`` over the copy, in a sandboxed session."""
    session = Session(copy, sandbox=True)
    try:
        yield session.stream(sql, params)
    finally:
        session.close()
