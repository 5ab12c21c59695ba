"""The analytics copy: the archive as immutable Parquet files that DuckDB reads.

A copy lives in one directory::

    MANIFEST.json               what a reader should read (replaced atomically)
    events/seq-<lo>-<hi>-*.parquet   archive rows, immutable segments
    grants/base-*.parquet       one row of mergeable state per grant
    grants/delta-*.parquet      newer state for recently touched grants
    tables/<table>-*.parquet    rejected_events and ingest_runs, re-read when changed
    trash/                      files a newer manifest no longer lists
    views.sql                   CREATE VIEW statements for the current manifest

Only the refresher writes, under an exclusive lock on ``.refresh.lock``.
Readers take no lock: they read the manifest, then the files it lists, which
are never modified; a file that a refresh retires moves to ``trash/`` and is
deleted some minutes later. A session reads the files through descriptors it
opened (``queries.session``), so it keeps its snapshot whatever a refresh does.

New archive rows are found by ``seq``. A trailing re-scan compares the ``seq``
values of the newest rows in the archive with those in the copy and fetches
any that are missing, so a row committed after rows with higher ``seq`` (two
PostgreSQL writers at once) still arrives. Deleting the directory loses
nothing: the next refresh rebuilds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import duckdb
import sqlalchemy as sa

from ingest.files import atomic_write_bytes
from ingest.store import sqlite_path

log = logging.getLogger(__name__)

FORMAT = 4
MANIFEST = "MANIFEST.json"
ENV_ANALYTICS_DIR = "GRANTEX_ARCHIVE_ANALYTICS_DIR"

# Rows per segment on a full build; smaller incremental segments are merged
# once SMALL_SEGMENTS_MAX of them are under SMALL_SEGMENT_ROWS.
SEGMENT_ROWS = 1_000_000
SMALL_SEGMENT_ROWS = 250_000
# Parallel archive readers during a full build (one per core here).
TRANSFER_LANES = 2
SMALL_SEGMENTS_MAX = 8
# The re-scan looks at the archive's newest RESCAN_ROWS seq values, and at
# everything copied during the last RESCAN_SECONDS.
RESCAN_ROWS = 100_000
RESCAN_SECONDS = 300.0
# Retired files stay readable this long for readers that hold an older manifest.
TRASH_SECONDS = 600.0
# How long a reader of a SQLite archive waits for a writer's lock (ingest
# holds one for a batch; closing its last connection checkpoints the WAL
# under an exclusive lock) before it gives up.
BUSY_TIMEOUT_SECONDS = 30.0
# The grants delta is folded into the base when it outgrows this share.
DELTA_SHARE = 0.25
DELTA_MIN_ROWS = 200_000

EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("seq", "BIGINT"),
    ("id", "VARCHAR"),
    ("source", "VARCHAR"),
    ("type", "VARCHAR"),
    ("occurred_at", "TIMESTAMPTZ"),
    ("received_at", "TIMESTAMPTZ"),
    ("grant_id", "VARCHAR"),
    ("agent_id", "VARCHAR"),
    ("principal_id", "VARCHAR"),
    ("revoked_by", "VARCHAR"),
    ("token_id", "VARCHAR"),
    ("method", "VARCHAR"),
    ("percentage", "DOUBLE"),
    ("remaining", "DOUBLE"),
    ("initial", "DOUBLE"),
    ("payload", "VARCHAR"),
)

# Written beside the archive's columns so that grouping by period reads a
# column instead of computing one per row.
DERIVED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("day", "DATE", "CAST(occurred_at AS DATE)"),
    ("week", "DATE", "CAST(date_trunc('week', occurred_at) AS DATE)"),
    ("month", "DATE", "CAST(date_trunc('month', occurred_at) AS DATE)"),
    # Read once here so that nothing later has to decompress every payload.
    (
        "revoked_grants",
        "VARCHAR[]",
        "CASE WHEN type = 'anomaly.auto_revoked' "
        "THEN TRY_CAST(json_extract(payload, '$.data.revokedGrants') AS VARCHAR[]) END",
    ),
)
SEGMENT_COLUMNS = EVENT_COLUMNS + tuple((name, kind) for name, kind, _ in DERIVED_COLUMNS)

TABLE_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "rejected_events": (
        ("id", "BIGINT"),
        ("source", "VARCHAR"),
        ("received_at", "TIMESTAMPTZ"),
        ("reason", "VARCHAR"),
        ("raw", "VARCHAR"),
        ("raw_length", "BIGINT"),
        ("event_id", "VARCHAR"),
        ("run_id", "BIGINT"),
    ),
    "ingest_runs": (
        ("id", "BIGINT"),
        ("source", "VARCHAR"),
        ("started_at", "TIMESTAMPTZ"),
        ("finished_at", "TIMESTAMPTZ"),
        ("since_requested", "TIMESTAMPTZ"),
        ("types", "VARCHAR"),
        ("base_url", "VARCHAR"),
        ("received", "BIGINT"),
        ("inserted", "BIGINT"),
        ("duplicates", "BIGINT"),
        ("rejected", "BIGINT"),
        ("reconnects", "BIGINT"),
        ("first_occurred_at", "TIMESTAMPTZ"),
        ("last_occurred_at", "TIMESTAMPTZ"),
        ("outcome", "VARCHAR"),
        ("exit_code", "BIGINT"),
        ("error", "VARCHAR"),
    ),
}

_TIME_COLUMNS = {"TIMESTAMPTZ"}


class AnalyticsError(Exception):
    """The analytics copy could not be refreshed or read."""


class ArchiveUnavailable(AnalyticsError):
    """The archive's database could not be reached."""


class ArchiveMissing(AnalyticsError):
    """There is no archive at the SQLite path given."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no archive at {path}: create it with `grantex-archive ingest` "
            "(or an empty one with `grantex-archive db upgrade`)"
        )
        self.path = path


class ArchiveSchemaError(AnalyticsError):
    """The archive has no schema, or not the one this version reads."""


def check_archive_exists(db_url: str) -> None:
    """Raise ArchiveMissing for a SQLite URL whose file does not exist."""
    path = sqlite_path(db_url)
    if path is not None and not path.is_file():
        raise ArchiveMissing(path)


def archive_read_engine(db_url: str) -> sa.Engine:
    """An SQLAlchemy engine for reading the archive, never writing it.

    A SQLite file opens read-only, with a busy timeout: a read waits for a
    writer's lock instead of failing with "database is locked". Python's
    sqlite3 runs a SELECT outside any explicit transaction, each one a short
    WAL snapshot that never blocks the writer.
    """
    path = sqlite_path(db_url)
    if path is None:
        from ingest.store import create_archive_engine

        return create_archive_engine(db_url)
    check_archive_exists(db_url)
    return sa.create_engine(
        f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro&uri=true",
        connect_args={"timeout": BUSY_TIMEOUT_SECONDS},
        poolclass=sa.pool.NullPool,
    )


def default_directory(db_url: str) -> Path:
    """Where a copy lives unless told: beside a SQLite file, else a user cache."""
    path = sqlite_path(db_url)
    if path is not None:
        return path.with_name(path.name + ".analytics")
    parsed = sa.engine.make_url(db_url)
    # The password is not part of the archive's identity, and must not end up in a path.
    identity = parsed._replace(password=None).render_as_string(hide_password=False)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "grantex-archive" / f"{parsed.database or 'archive'}-{digest}"


# --------------------------------------------------------------------------- manifest


@dataclass
class Segment:
    file: str
    rows: int
    min_seq: int
    max_seq: int


@dataclass
class Manifest:
    """What the copy holds; ``watermark`` is the highest archive seq copied."""

    archive: str = ""
    watermark: int = 0
    anchor_id: str | None = None
    segments: list[Segment] = field(default_factory=list)
    grants_base: str | None = None
    grants_base_rows: int = 0
    grants_delta: str | None = None
    grants_delta_rows: int = 0
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[tuple[float, int]] = field(default_factory=list)
    refreshed_at: str | None = None
    built_at: str | None = None

    @property
    def events(self) -> int:
        return sum(s.rows for s in self.segments)

    def files(self) -> list[str]:
        out = [s.file for s in self.segments]
        out += [f for f in (self.grants_base, self.grants_delta) if f]
        out += [t["file"] for t in self.tables.values()]
        return out

    def to_json(self) -> str:
        data = {
            "format": FORMAT,
            "archive": self.archive,
            "watermark": self.watermark,
            "anchor_id": self.anchor_id,
            "events": self.events,
            "segments": [vars(s) for s in self.segments],
            "grants": {
                "base": self.grants_base,
                "base_rows": self.grants_base_rows,
                "delta": self.grants_delta,
                "delta_rows": self.grants_delta_rows,
            },
            "tables": self.tables,
            "checkpoints": self.checkpoints,
            "refreshed_at": self.refreshed_at,
            "built_at": self.built_at,
        }
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise AnalyticsError(f"unknown analytics copy format {data.get('format')!r}")
        grants = data["grants"]
        return cls(
            archive=data["archive"],
            watermark=data["watermark"],
            anchor_id=data["anchor_id"],
            segments=[Segment(**s) for s in data["segments"]],
            grants_base=grants["base"],
            grants_base_rows=grants["base_rows"],
            grants_delta=grants["delta"],
            grants_delta_rows=grants["delta_rows"],
            tables=data["tables"],
            checkpoints=[(float(t), int(w)) for t, w in data["checkpoints"]],
            refreshed_at=data["refreshed_at"],
            built_at=data["built_at"],
        )


def read_manifest(directory: Path) -> Manifest | None:
    try:
        text = (directory / MANIFEST).read_text()
    except FileNotFoundError:
        return None
    try:
        return Manifest.from_json(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise AnalyticsError(f"{directory / MANIFEST} is damaged ({exc})") from None


# --------------------------------------------------------------------------- archive side


def _libpq_uri(db_url: str) -> str:
    """The libpq URI for an SQLAlchemy PostgreSQL URL (driver suffix dropped)."""
    url = sa.engine.make_url(db_url)
    auth = ""
    if url.username:
        auth = quote(url.username, safe="")
        if url.password is not None:
            auth += ":" + quote(str(url.password), safe="")
        auth += "@"
    host = url.host or ""
    if url.port:
        host += f":{url.port}"
    query = "&".join(
        f"{quote(k, safe='')}={quote(v if isinstance(v, str) else v[-1], safe='')}"
        for k, v in url.query.items()
    )
    return f"postgresql://{auth}{host}/{quote(url.database or '', safe='')}" + (
        f"?{query}" if query else ""
    )


class ArchiveReader:
    """Arrow streams out of the archive through the ADBC driver for its database."""

    def __init__(self, db_url: str) -> None:
        import adbc_driver_manager as adbc

        self._adbc = adbc
        path = sqlite_path(db_url)
        self.sqlite = path is not None
        if path is not None:
            if not path.is_file():
                raise ArchiveMissing(path)
            import adbc_driver_sqlite

            driver = adbc_driver_sqlite._driver_path()
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        else:
            try:
                import adbc_driver_postgresql
            except ImportError:
                raise AnalyticsError(
                    "reading a PostgreSQL archive needs its ADBC driver: "
                    "install grantex-archive[postgres]"
                ) from None
            driver = adbc_driver_postgresql._driver_path()
            uri = _libpq_uri(db_url)
        try:
            self._db = adbc.AdbcDatabase(driver=driver, uri=uri)
            self._conn = adbc.AdbcConnection(self._db)
            if self.sqlite:
                # Without it SQLite fails at once where a writer holds a lock.
                # Each query runs in autocommit: its own short read snapshot.
                self._execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        except adbc.Error as exc:
            self.close()
            raise ArchiveUnavailable(f"database unusable: {_adbc_message(exc)}") from None

    def _execute(self, sql: str) -> None:
        statement = self._adbc.AdbcStatement(self._conn)
        try:
            statement.set_sql_query(sql)
            statement.execute_update()
        finally:
            statement.close()

    def check_schema(self, duck: duckdb.DuckDBPyConnection) -> None:
        """Raise ArchiveSchemaError unless the archive's schema is the one this version reads."""
        exists = (
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
            if self.sqlite
            else "SELECT CAST(count(*) AS BIGINT) FROM (SELECT to_regclass('alembic_version') r) t "
            "WHERE r IS NOT NULL"
        )
        (tables,) = self.scalar_row(exists, duck)
        current = None
        if tables:
            stream = self.stream("SELECT version_num FROM alembic_version")
            try:
                found = duck.from_arrow(stream).fetchall()
            finally:
                stream.close()
            current = str(found[0][0]) if found else None
        if current is None:
            raise ArchiveSchemaError(
                "the archive has no grantex-archive schema (was it downgraded?): "
                "run `grantex-archive db upgrade`"
            )
        from ingest.migrate import head_revision  # Alembic loads only when needed

        head = head_revision()
        if current != head:
            raise ArchiveSchemaError(
                f"the archive's schema is at {current}, this version reads {head}: "
                "run `grantex-archive db upgrade` (or upgrade grantex-archive if the "
                "archive is newer)"
            )

    def close(self) -> None:
        for handle in ("_conn", "_db"):
            with contextlib.suppress(Exception):
                getattr(self, handle).close()

    def stream(self, sql: str) -> Any:
        """An object with ``__arrow_c_stream__`` for ``sql``; DuckDB scans it."""
        statement = self._adbc.AdbcStatement(self._conn)
        statement.set_sql_query(sql)
        if self.sqlite:
            statement.set_options(**{"adbc.sqlite.query.batch_rows": "16384"})
        try:
            handle, _ = statement.execute_query()
        except self._adbc.Error as exc:
            raise AnalyticsError(f"reading the archive failed: {_adbc_message(exc)}") from None
        return _Stream(handle, statement)

    def scalar_row(self, sql: str, duck: duckdb.DuckDBPyConnection) -> tuple[Any, ...]:
        stream = self.stream(sql)
        try:
            rows = duck.from_arrow(stream).fetchall()
        finally:
            stream.close()
        return tuple(rows[0])


class _Stream:
    """Keeps the statement alive while DuckDB reads the stream."""

    def __init__(self, handle: Any, statement: Any) -> None:
        self._handle = handle
        self._statement = statement

    def __arrow_c_schema__(self) -> Any:
        # DuckDB binds with the schema, then scans the stream once.
        return self._handle.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: object = None) -> Any:
        return self._handle.__arrow_c_stream__(requested_schema)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._statement.close()


def _adbc_message(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _typed_select(
    table: str, columns: tuple[tuple[str, str], ...], where: str, sqlite: bool
) -> str:
    """SELECT for the archive; on SQLite a typed first row pins the driver's type guess.

    The SQLite driver infers column types from the first batch: a column that is
    NULL throughout it would become int64 and fail on the first text value.
    """
    names = ", ".join(name for name, _ in columns)
    if not sqlite:
        return f"SELECT {names} FROM {table} WHERE {where}"
    probe = ", ".join(
        f"{_probe_value(kind)} AS {name}" if name != columns[0][0] else f"NULL AS {name}"
        for name, kind in columns
    )
    return f"SELECT {probe} UNION ALL SELECT {names} FROM {table} WHERE {where}"


def _probe_value(kind: str) -> str:
    return {"BIGINT": "0", "DOUBLE": "0.5"}.get(kind, "''")


def _duck_projection(columns: tuple[tuple[str, str], ...]) -> str:
    """Cast what the driver produced to the copy's types (SQLite times are text)."""
    parts = []
    for name, kind in columns:
        if kind in _TIME_COLUMNS:
            parts.append(f"CAST(CAST({name} AS TIMESTAMP) AS TIMESTAMPTZ) AS {name}")
        else:
            parts.append(f"CAST({name} AS {kind}) AS {name}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- refresh


@dataclass
class RefreshResult:
    rebuilt: bool
    new_rows: int
    rescued_rows: int
    seconds: float
    manifest: Manifest
    waited: bool = False
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[int, int], None]


class AnalyticsCopy:
    """One archive's analytics copy in ``directory``."""

    def __init__(self, db_url: str, directory: Path | None = None) -> None:
        self.db_url = db_url
        self.directory = Path(directory) if directory else default_directory(db_url)
        url = sa.engine.make_url(db_url)
        self.identity = url._replace(password=None).render_as_string(hide_password=False)
        path = sqlite_path(db_url)
        if path is not None:
            self.identity = f"sqlite:///{path.resolve()}"

    # -- reading

    def manifest(self) -> Manifest | None:
        return read_manifest(self.directory)

    def size_bytes(self) -> int:
        manifest = self.manifest()
        if manifest is None:
            return 0
        total = 0
        for name in manifest.files():
            with contextlib.suppress(FileNotFoundError):
                total += (self.directory / name).stat().st_size
        return total

    # -- refreshing

    @contextlib.contextmanager
    def _lock(self, wait: float) -> Iterator[bool]:
        """Yields True once the refresher lock is held, False if ``wait`` ran out."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".refresh.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        yield False
                        return
                    time.sleep(0.05)
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def refresh(
        self,
        full: bool = False,
        wait: float = 120.0,
        progress: ProgressFn | None = None,
    ) -> RefreshResult:
        """Bring the copy up to the archive; another refresher's work is waited for.

        When the lock is still held after ``wait`` seconds, the copy is used as it
        is (``waited`` set): readers never fail because somebody else refreshes.
        """
        started = time.monotonic()
        # Before anything is created: a mistyped path must leave nothing behind.
        check_archive_exists(self.db_url)
        try:
            return self._refresh(full, wait, progress, started)
        except OSError as exc:
            raise AnalyticsError(
                f"cannot write the analytics copy in {self.directory}: "
                f"{exc.strerror or exc} (choose another place with --analytics-dir)"
            ) from None

    def _refresh(
        self, full: bool, wait: float, progress: ProgressFn | None, started: float
    ) -> RefreshResult:
        with self._lock(wait) as held:
            if not held:
                manifest = self.manifest()
                if manifest is None:
                    raise AnalyticsError(
                        f"another process is building the analytics copy in {self.directory}; "
                        "try again when it has finished"
                    )
                return RefreshResult(False, 0, 0, time.monotonic() - started, manifest, True)
            refresher = _Refresher(self, progress)
            try:
                return refresher.run(full, started)
            finally:
                refresher.close()


class _Refresher:
    def __init__(self, copy: AnalyticsCopy, progress: ProgressFn | None) -> None:
        self.copy = copy
        self.dir = copy.directory
        self.progress = progress
        self.reader = ArchiveReader(copy.db_url)
        self.duck = duckdb.connect(config={"threads": 2, "memory_limit": "600MB"})
        self._exec("SET TimeZone = 'UTC'")
        self._exec("SET preserve_insertion_order = false")
        tmp = self.dir / "tmp"
        self._exec(f"SET temp_directory = '{_sql_text(str(tmp))}'")
        self.retired: list[str] = []

    def _exec(self, sql: str) -> list[tuple[Any, ...]]:
        return self.duck.execute(sql).fetchall()

    def close(self) -> None:
        self.reader.close()
        self.duck.close()
        shutil.rmtree(self.dir / "tmp", ignore_errors=True)

    # -- the steps

    def run(self, full: bool, started: float) -> RefreshResult:
        self.reader.check_schema(self.duck)
        for sub in ("events", "grants", "tables", "trash"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
            # Under the lock, a temporary file is what a killed refresher left.
            for stale in (self.dir / sub).glob("*.tmp"):
                stale.unlink(missing_ok=True)
        for stale in self.dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        reason = None
        try:
            manifest = None if full else self.copy.manifest()
        except AnalyticsError as exc:
            reason, manifest = str(exc), None
        if manifest is not None:
            self._retire_orphans(manifest)
        # No count(*): on a large archive it is a scan, and the seq range tells enough.
        (archive_max,) = self.reader.scalar_row("SELECT max(seq) FROM events", self.duck)
        archive_max = int(archive_max or 0)
        if manifest is not None:
            reason = self._mismatch(manifest, archive_max)
            if reason is not None:
                log.warning("rebuilding the analytics copy: %s", reason)
                manifest = None
        rebuilt = manifest is None
        if manifest is None:
            self._retire_all()
            manifest = Manifest(archive=self.copy.identity, built_at=_now_text())
        previous = manifest.watermark
        new_files: list[Segment] = []

        timings: dict[str, float] = {}
        clock = time.monotonic()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.monotonic()
            timings[name] = now - clock
            clock = now

        rescued = self._rescan(manifest, previous, new_files) if not rebuilt else 0
        lap("rescan")
        new_rows = self._copy_new(previous, archive_max, new_files)
        lap("events")
        manifest.segments.extend(new_files)
        if new_files:
            if rebuilt:
                self._build_grants(manifest)
            else:
                self._update_grants(manifest, new_files)
        elif manifest.grants_base is None:
            self._build_grants(manifest)
        lap("grants")
        self._compact_segments(manifest)
        lap("compaction")
        self._refresh_tables(manifest)
        lap("tables")

        if archive_max > manifest.watermark:
            manifest.watermark = archive_max
        manifest.anchor_id = self._anchor(manifest.watermark)
        now = time.time()
        manifest.checkpoints.append((now, manifest.watermark))
        manifest.checkpoints = _prune_checkpoints(manifest.checkpoints, now)
        manifest.refreshed_at = _now_text()
        # Synced to disk: after a crash the copy's manifest is whole, never empty.
        atomic_write_bytes(self.dir / MANIFEST, manifest.to_json().encode())
        atomic_write_bytes(self.dir / "views.sql", views_sql(self.dir, manifest).encode())
        self._retire_now()
        self._empty_trash()
        lap("manifest")
        log.debug("refresh timings: %s", {k: round(v, 3) for k, v in timings.items()})
        return RefreshResult(
            rebuilt,
            new_rows,
            rescued,
            time.monotonic() - started,
            manifest,
            reason=reason,
            timings=timings,
        )

    def _mismatch(self, manifest: Manifest, archive_max: int) -> str | None:
        if manifest.archive != self.copy.identity:
            return "the copy was made from another archive"
        if archive_max < manifest.watermark:
            return "the archive holds fewer events than the copy (was it replaced?)"
        if manifest.watermark and self._anchor(manifest.watermark) != manifest.anchor_id:
            return "the archive's events differ from the copy's (was it replaced?)"
        for name in manifest.files():
            if not (self.dir / name).exists():
                return f"{name} is missing"
        return None

    def _anchor(self, seq: int) -> str | None:
        if not seq:
            return None
        stream = self.reader.stream(f"SELECT id FROM events WHERE seq = {int(seq)}")
        try:
            rows = self.duck.from_arrow(stream).fetchall()
        finally:
            stream.close()
        return str(rows[0][0]) if rows else None

    def _copy_new(self, previous: int, archive_max: int, out: list[Segment]) -> int:
        """Copy rows above the watermark, in seq ranges of SEGMENT_ROWS.

        Several ranges (a full build) go through TRANSFER_LANES readers at once:
        one ADBC stream is bound by the driver's single thread, while DuckDB's
        Parquet writer waits.
        """
        total = archive_max - previous  # an upper bound: seq can have gaps
        ranges = [
            (lo, min(lo + SEGMENT_ROWS, archive_max))
            for lo in range(previous, archive_max, SEGMENT_ROWS)
        ]
        if not ranges:
            return 0
        done: list[Segment] = []
        lock = threading.Lock()
        pending = list(reversed(ranges))

        def lane(reader: ArchiveReader, conn: duckdb.DuckDBPyConnection) -> None:
            while True:
                with lock:
                    if not pending:
                        return
                    lo, hi = pending.pop()
                segment = self._write_segment(f"seq > {lo} AND seq <= {hi}", reader, conn)
                with lock:
                    if segment is not None:
                        done.append(segment)
                    if self.progress is not None:
                        self.progress(sum(s.rows for s in done), total)

        extra = min(TRANSFER_LANES, len(ranges)) - 1
        readers = [ArchiveReader(self.copy.db_url) for _ in range(extra)]
        try:
            with ThreadPoolExecutor(max_workers=extra + 1) as pool:
                futures = [pool.submit(lane, self.reader, self.duck)]
                futures += [pool.submit(lane, r, self.duck.cursor()) for r in readers]
                for future in futures:
                    future.result()
        finally:
            for reader in readers:
                reader.close()
        done.sort(key=lambda s: s.min_seq)
        out.extend(done)
        return sum(s.rows for s in done)

    def _copy_table(
        self,
        table: str,
        columns: tuple[tuple[str, str], ...],
        where: str,
        tmp: Path,
        reader: ArchiveReader | None = None,
        conn: duckdb.DuckDBPyConnection | None = None,
    ) -> None:
        """Stream rows of an archive table into the Parquet file ``tmp``."""
        reader = reader or self.reader
        conn = conn or self.duck
        key = columns[0][0]
        stream = reader.stream(_typed_select(table, columns, where, reader.sqlite))
        view = f"incoming_{secrets.token_hex(4)}"
        select = f"SELECT {_duck_projection(columns)} FROM {view} WHERE {key} IS NOT NULL"
        if table == "events":
            derived = ", ".join(f"{sql} AS {name}" for name, _, sql in DERIVED_COLUMNS)
            select = f"SELECT *, {derived} FROM ({select})"
        try:
            conn.from_arrow(stream).create_view(view)
            conn.execute(
                f"COPY ({select}) "
                f"TO '{_sql_text(str(tmp))}' (FORMAT parquet, COMPRESSION zstd, "
                "ROW_GROUP_SIZE 100000)"
            ).fetchall()
        except duckdb.Error as exc:
            tmp.unlink(missing_ok=True)
            raise AnalyticsError(f"copying {table} failed: {_first(exc)}") from None
        finally:
            stream.close()
            with contextlib.suppress(duckdb.Error):
                conn.execute(f"DROP VIEW IF EXISTS {view}").fetchall()

    def _write_segment(
        self,
        where: str,
        reader: ArchiveReader | None = None,
        conn: duckdb.DuckDBPyConnection | None = None,
    ) -> Segment | None:
        conn = conn or self.duck
        tmp = self.dir / f"events/part-{secrets.token_hex(8)}.parquet.tmp"
        self._copy_table("events", EVENT_COLUMNS, where, tmp, reader, conn)
        count, lo, hi = conn.execute(
            f"SELECT count(*), min(seq), max(seq) FROM read_parquet('{_sql_text(str(tmp))}')"
        ).fetchall()[0]
        if not count:
            tmp.unlink()
            return None
        final = f"events/seq-{lo:012d}-{hi:012d}-{secrets.token_hex(4)}.parquet"
        os.replace(tmp, self.dir / final)
        return Segment(final, int(count), int(lo), int(hi))

    def _rescan(self, manifest: Manifest, previous: int, out: list[Segment]) -> int:
        """Fetch rows with seq at or below the watermark that the copy lacks."""
        if not previous:
            return 0
        lo = max(previous - RESCAN_ROWS, 0)
        # Rows copied within the horizon lie above the watermark of the newest
        # refresh before it (or of the first refresh, when all are recent).
        horizon = time.time() - RESCAN_SECONDS
        older = [mark for when, mark in manifest.checkpoints if when < horizon]
        if older:
            lo = min(lo, older[-1])
        elif manifest.checkpoints:
            lo = min(lo, manifest.checkpoints[0][1])
        stream = self.reader.stream(
            f"SELECT seq FROM events WHERE seq > {lo} AND seq <= {previous}"
        )
        files = [self.dir / s.file for s in manifest.segments if s.max_seq > lo]
        try:
            self.duck.from_arrow(stream).create_view("archive_seqs", replace=True)
            if files:
                held = (
                    f"SELECT seq FROM read_parquet({_file_list(files)}) "
                    f"WHERE seq > {lo} AND seq <= {previous}"
                )
            else:
                held = "SELECT NULL::BIGINT AS seq WHERE false"
            missing = [
                int(r[0])
                for r in self._exec(
                    f"SELECT seq FROM archive_seqs ANTI JOIN ({held}) h USING (seq) ORDER BY seq"
                )
            ]
        finally:
            stream.close()
        rescued = 0
        for start in range(0, len(missing), 5000):
            chunk = missing[start : start + 5000]
            segment = self._write_segment(f"seq IN ({', '.join(map(str, chunk))})")
            if segment is not None:
                log.info("re-scan found %d rows committed out of seq order", segment.rows)
                out.append(segment)
                rescued += segment.rows
        return rescued

    # -- grants

    def _build_grants(self, manifest: Manifest) -> None:
        files = [self.dir / s.file for s in manifest.segments]
        name = self._write_grants("base", _grant_state_sql(_events_from(files)))
        if manifest.grants_base:
            self.retired.append(manifest.grants_base)
        if manifest.grants_delta:
            self.retired.append(manifest.grants_delta)
        manifest.grants_base, manifest.grants_base_rows = name
        manifest.grants_delta, manifest.grants_delta_rows = None, 0

    def _update_grants(self, manifest: Manifest, new: list[Segment]) -> None:
        """Merge the state of grants the new rows touch into the delta file."""
        fresh = _grant_state_sql(_events_from([self.dir / s.file for s in new]))
        current = _current_state_sql(self.dir.joinpath, manifest)
        merged = _merge_state_sql(fresh, current)
        if manifest.grants_delta:
            delta = f"read_parquet('{_sql_text(str(self.dir / manifest.grants_delta))}')"
            next_delta = (
                f"WITH m AS ({merged}) SELECT * FROM m UNION ALL "
                f"SELECT d.* FROM {delta} d ANTI JOIN m USING (grant_id)"
            )
        else:
            next_delta = merged
        name, rows = self._write_grants("delta", next_delta)
        if manifest.grants_delta:
            self.retired.append(manifest.grants_delta)
        manifest.grants_delta, manifest.grants_delta_rows = name, rows
        if rows > max(DELTA_MIN_ROWS, manifest.grants_base_rows * DELTA_SHARE):
            assert manifest.grants_base is not None
            base, base_rows = self._write_grants(
                "base", _current_state_sql(self.dir.joinpath, manifest)
            )
            self.retired += [manifest.grants_base, name]
            manifest.grants_base, manifest.grants_base_rows = base, base_rows
            manifest.grants_delta, manifest.grants_delta_rows = None, 0

    def _write_grants(self, kind: str, sql: str) -> tuple[str, int]:
        name = f"grants/{kind}-{secrets.token_hex(8)}.parquet"
        tmp = self.dir / f"{name}.tmp"
        try:
            self._exec(
                f"COPY ({sql}) TO '{_sql_text(str(tmp))}' (FORMAT parquet, COMPRESSION zstd)"
            )
        except duckdb.Error as exc:
            tmp.unlink(missing_ok=True)
            raise AnalyticsError(f"building the grants table failed: {_first(exc)}") from None
        rows = self._exec(f"SELECT count(*) FROM read_parquet('{_sql_text(str(tmp))}')")
        os.replace(tmp, self.dir / name)
        return name, int(rows[0][0])

    # -- segments

    def _compact_segments(self, manifest: Manifest) -> None:
        small = [s for s in manifest.segments if s.rows < SMALL_SEGMENT_ROWS]
        if len(small) < SMALL_SEGMENTS_MAX:
            return
        files = [self.dir / s.file for s in small]
        tmp_name = f"events/part-{secrets.token_hex(8)}.parquet.tmp"
        tmp = self.dir / tmp_name
        self._exec(
            f"COPY (SELECT * FROM read_parquet({_file_list(files)}) ORDER BY seq) "
            f"TO '{_sql_text(str(tmp))}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000)"
        )
        lo = min(s.min_seq for s in small)
        hi = max(s.max_seq for s in small)
        rows = sum(s.rows for s in small)
        final = f"events/seq-{lo:012d}-{hi:012d}-{secrets.token_hex(4)}.parquet"
        os.replace(tmp, self.dir / final)
        keep = [s for s in manifest.segments if s.rows >= SMALL_SEGMENT_ROWS]
        manifest.segments = sorted([*keep, Segment(final, rows, lo, hi)], key=lambda s: s.min_seq)
        self.retired += [s.file for s in small]

    # -- small tables

    def _refresh_tables(self, manifest: Manifest) -> None:
        for table, columns in TABLE_COLUMNS.items():
            marker_sql = {
                "rejected_events": "SELECT count(*), max(id) FROM rejected_events",
                "ingest_runs": (
                    "SELECT count(*), max(id), sum(received), sum(inserted), "
                    "max(finished_at), count(finished_at), sum(length(outcome)), "
                    "sum(length(error)) FROM ingest_runs"
                ),
            }[table]
            marker = [str(v) for v in self.reader.scalar_row(marker_sql, self.duck)]
            known = manifest.tables.get(table)
            if known and known.get("marker") == marker:
                continue
            name = f"tables/{table}-{secrets.token_hex(8)}.parquet"
            tmp = self.dir / f"{name}.tmp"
            self._copy_table(table, columns, "1 = 1", tmp)
            os.replace(tmp, self.dir / name)
            if known:
                self.retired.append(known["file"])
            manifest.tables[table] = {"file": name, "marker": marker}

    # -- retiring files

    def _retire_all(self) -> None:
        for sub in ("events", "grants", "tables"):
            for path in (self.dir / sub).iterdir():
                self.retired.append(f"{sub}/{path.name}")

    def _retire_orphans(self, manifest: Manifest) -> None:
        """Retire the files no manifest names: what a killed refresher left.

        Under the lock no refresher is writing, so such a file is a finished
        segment or state of a refresh killed before its manifest, or one a
        refresh killed after its manifest had not yet moved to trash/ (a
        reader may still hold the older manifest: hence trash, not deletion).
        """
        named = set(manifest.files())
        for sub in ("events", "grants", "tables"):
            for path in (self.dir / sub).iterdir():
                name = f"{sub}/{path.name}"
                if name not in named:
                    log.info("retiring %s, left by an interrupted refresh", name)
                    self.retired.append(name)

    def _retire_now(self) -> None:
        stamp = int(time.time())
        for name in self.retired:
            source = self.dir / name
            with contextlib.suppress(FileNotFoundError):
                os.replace(source, self.dir / "trash" / f"{stamp}-{source.name}")
        self.retired = []

    def _empty_trash(self) -> None:
        cutoff = time.time() - TRASH_SECONDS
        for path in (self.dir / "trash").iterdir():
            try:
                stamp = int(path.name.split("-", 1)[0])
            except ValueError:
                stamp = 0
            if stamp < cutoff:
                path.unlink(missing_ok=True)


def _prune_checkpoints(points: list[tuple[float, int]], now: float) -> list[tuple[float, int]]:
    """Keep the checkpoints inside the re-scan horizon, and the newest one before it."""
    horizon = now - RESCAN_SECONDS
    inside = [p for p in points if p[0] >= horizon]
    before = [p for p in points if p[0] < horizon]
    return before[-1:] + inside


# --------------------------------------------------------------------------- SQL pieces


def _sql_text(value: str) -> str:
    return value.replace("'", "''")


def _file_list(files: list[Path]) -> str:
    return "[" + ", ".join(f"'{_sql_text(str(f))}'" for f in files) + "]"


def _events_from(files: list[Path]) -> str:
    if not files:
        return f"(SELECT * FROM ({_empty_select(SEGMENT_COLUMNS)}))"
    return f"read_parquet({_file_list(files)})"


def _empty_select(columns: tuple[tuple[str, str], ...]) -> str:
    cols = ", ".join(f"CAST(NULL AS {kind}) AS {name}" for name, kind in columns)
    return f"SELECT {cols} WHERE false"


_BUDGET = "type IN ('budget.threshold', 'budget.exhausted')"
# token.issued without agentId (documented envelopes): the agent comes from
# the grant, so the state keeps their counts for reports to use without a join.
_AGENTLESS = "type = 'token.issued' AND agent_id IS NULL"

# One row per grant of mergeable state: each column is a min, max, sum or a
# value paired with the time that picks it, so the state of old rows and of
# new rows combine without re-reading the old.
GRANT_STATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("grant_id", "VARCHAR"),
    ("source", "VARCHAR"),
    ("created_at", "TIMESTAMPTZ"),
    ("created_agent_id", "VARCHAR"),
    ("created_principal_id", "VARCHAR"),
    ("any_agent_id", "VARCHAR"),
    ("any_principal_id", "VARCHAR"),
    ("first_token_at", "TIMESTAMPTZ"),
    ("last_token_at", "TIMESTAMPTZ"),
    ("tokens_issued", "BIGINT"),
    ("agentless_tokens", "BIGINT"),
    ("agentless_exchange", "BIGINT"),
    ("agentless_refresh", "BIGINT"),
    ("agentless_first_at", "TIMESTAMPTZ"),
    ("agentless_last_at", "TIMESTAMPTZ"),
    ("revoked_event_at", "TIMESTAMPTZ"),
    ("revoked_by_field", "VARCHAR"),
    ("revoked_by_field_at", "TIMESTAMPTZ"),
    ("auto_revoked_at", "TIMESTAMPTZ"),
    ("auto_agent_id", "VARCHAR"),
    ("first_budget_at", "TIMESTAMPTZ"),
    ("last_budget_at", "TIMESTAMPTZ"),
    ("budget_times", "TIMESTAMPTZ[]"),
    ("budget_50_at", "TIMESTAMPTZ"),
    ("budget_80_at", "TIMESTAMPTZ"),
    ("exhausted_at", "TIMESTAMPTZ"),
    ("initial_budget", "DOUBLE"),
    ("first_event_at", "TIMESTAMPTZ"),
    ("last_event_at", "TIMESTAMPTZ"),
    ("events", "BIGINT"),
)


def _grant_state_sql(events: str) -> str:
    """Grant state from the events in ``events`` (a table expression)."""
    # ``events`` is named twice rather than put in a CTE: DuckDB would
    # materialise a CTE used twice, every row of it.
    return f"""
WITH direct AS (
    SELECT grant_id,
        min(source) AS source,
        min(occurred_at) FILTER (WHERE type = 'grant.created') AS created_at,
        arg_min(agent_id, occurred_at) FILTER (WHERE type = 'grant.created') AS created_agent_id,
        arg_min(principal_id, occurred_at) FILTER (WHERE type = 'grant.created')
            AS created_principal_id,
        min(agent_id) AS any_agent_id,
        min(principal_id) AS any_principal_id,
        min(occurred_at) FILTER (WHERE type = 'token.issued') AS first_token_at,
        max(occurred_at) FILTER (WHERE type = 'token.issued') AS last_token_at,
        count(*) FILTER (WHERE type = 'token.issued') AS tokens_issued,
        count(*) FILTER (WHERE {_AGENTLESS}) AS agentless_tokens,
        count(*) FILTER (WHERE {_AGENTLESS} AND method = 'exchange') AS agentless_exchange,
        count(*) FILTER (WHERE {_AGENTLESS} AND method = 'refresh') AS agentless_refresh,
        min(occurred_at) FILTER (WHERE {_AGENTLESS}) AS agentless_first_at,
        max(occurred_at) FILTER (WHERE {_AGENTLESS}) AS agentless_last_at,
        min(occurred_at) FILTER (WHERE type = 'grant.revoked') AS revoked_event_at,
        arg_min(revoked_by, occurred_at)
            FILTER (WHERE type = 'grant.revoked' AND revoked_by IS NOT NULL) AS revoked_by_field,
        min(occurred_at)
            FILTER (WHERE type = 'grant.revoked' AND revoked_by IS NOT NULL)
            AS revoked_by_field_at,
        CAST(NULL AS TIMESTAMPTZ) AS auto_revoked_at,
        CAST(NULL AS VARCHAR) AS auto_agent_id,
        min(occurred_at) FILTER (WHERE {_BUDGET}) AS first_budget_at,
        max(occurred_at) FILTER (WHERE {_BUDGET}) AS last_budget_at,
        list(occurred_at ORDER BY occurred_at) FILTER (WHERE {_BUDGET}) AS budget_times,
        min(occurred_at) FILTER (WHERE type = 'budget.exhausted'
            OR (type = 'budget.threshold' AND percentage >= 50)) AS budget_50_at,
        min(occurred_at) FILTER (WHERE type = 'budget.exhausted'
            OR (type = 'budget.threshold' AND percentage >= 80)) AS budget_80_at,
        min(occurred_at) FILTER (WHERE type = 'budget.exhausted') AS exhausted_at,
        max(initial) AS initial_budget,
        min(occurred_at) AS first_event_at,
        max(occurred_at) AS last_event_at,
        count(*) AS events
    FROM {events} WHERE grant_id IS NOT NULL
    GROUP BY grant_id
),
listed AS (
    SELECT unnest(revoked_grants) AS grant_id, occurred_at, source, agent_id
    FROM {events} WHERE type = 'anomaly.auto_revoked'
),
auto AS (
    SELECT grant_id,
        min(source) AS source,
        CAST(NULL AS TIMESTAMPTZ) AS created_at,
        CAST(NULL AS VARCHAR) AS created_agent_id,
        CAST(NULL AS VARCHAR) AS created_principal_id,
        CAST(NULL AS VARCHAR) AS any_agent_id,
        CAST(NULL AS VARCHAR) AS any_principal_id,
        CAST(NULL AS TIMESTAMPTZ) AS first_token_at,
        CAST(NULL AS TIMESTAMPTZ) AS last_token_at,
        CAST(0 AS BIGINT) AS tokens_issued,
        CAST(0 AS BIGINT) AS agentless_tokens,
        CAST(0 AS BIGINT) AS agentless_exchange,
        CAST(0 AS BIGINT) AS agentless_refresh,
        CAST(NULL AS TIMESTAMPTZ) AS agentless_first_at,
        CAST(NULL AS TIMESTAMPTZ) AS agentless_last_at,
        CAST(NULL AS TIMESTAMPTZ) AS revoked_event_at,
        CAST(NULL AS VARCHAR) AS revoked_by_field,
        CAST(NULL AS TIMESTAMPTZ) AS revoked_by_field_at,
        min(occurred_at) AS auto_revoked_at,
        arg_min(agent_id, occurred_at) AS auto_agent_id,
        CAST(NULL AS TIMESTAMPTZ) AS first_budget_at,
        CAST(NULL AS TIMESTAMPTZ) AS last_budget_at,
        CAST(NULL AS TIMESTAMPTZ[]) AS budget_times,
        CAST(NULL AS TIMESTAMPTZ) AS budget_50_at,
        CAST(NULL AS TIMESTAMPTZ) AS budget_80_at,
        CAST(NULL AS TIMESTAMPTZ) AS exhausted_at,
        CAST(NULL AS DOUBLE) AS initial_budget,
        min(occurred_at) AS first_event_at,
        max(occurred_at) AS last_event_at,
        CAST(0 AS BIGINT) AS events
    FROM listed WHERE grant_id IS NOT NULL
    GROUP BY grant_id
)
-- A join rather than a second GROUP BY: only the few auto-revoked grants need merging.
SELECT d.* REPLACE (
        least(d.source, a.source) AS source,
        a.auto_revoked_at AS auto_revoked_at,
        a.auto_agent_id AS auto_agent_id,
        least(d.first_event_at, a.first_event_at) AS first_event_at,
        greatest(d.last_event_at, a.last_event_at) AS last_event_at)
FROM direct d LEFT JOIN auto a USING (grant_id)
UNION ALL BY NAME
SELECT a.* FROM auto a ANTI JOIN direct d USING (grant_id)
"""


def _combine_sql(states: str) -> str:
    """Fold several state rows per grant into one."""
    return f"""
SELECT grant_id,
    min(source) AS source,
    min(created_at) AS created_at,
    arg_min(created_agent_id, created_at) AS created_agent_id,
    arg_min(created_principal_id, created_at) AS created_principal_id,
    min(any_agent_id) AS any_agent_id,
    min(any_principal_id) AS any_principal_id,
    min(first_token_at) AS first_token_at,
    max(last_token_at) AS last_token_at,
    CAST(sum(tokens_issued) AS BIGINT) AS tokens_issued,
    CAST(sum(agentless_tokens) AS BIGINT) AS agentless_tokens,
    CAST(sum(agentless_exchange) AS BIGINT) AS agentless_exchange,
    CAST(sum(agentless_refresh) AS BIGINT) AS agentless_refresh,
    min(agentless_first_at) AS agentless_first_at,
    max(agentless_last_at) AS agentless_last_at,
    min(revoked_event_at) AS revoked_event_at,
    arg_min(revoked_by_field, revoked_by_field_at) AS revoked_by_field,
    min(revoked_by_field_at) AS revoked_by_field_at,
    min(auto_revoked_at) AS auto_revoked_at,
    arg_min(auto_agent_id, auto_revoked_at) AS auto_agent_id,
    min(first_budget_at) AS first_budget_at,
    max(last_budget_at) AS last_budget_at,
    list_sort(flatten(list(budget_times) FILTER (WHERE budget_times IS NOT NULL)))
        AS budget_times,
    min(budget_50_at) AS budget_50_at,
    min(budget_80_at) AS budget_80_at,
    min(exhausted_at) AS exhausted_at,
    max(initial_budget) AS initial_budget,
    min(first_event_at) AS first_event_at,
    max(last_event_at) AS last_event_at,
    CAST(sum(events) AS BIGINT) AS events
FROM ({states}) s
GROUP BY grant_id
"""


# Where a file a manifest names (``events/seq-...parquet``) is read from.
Locate = Callable[[str], Path]


def _current_state_sql(locate: Locate, manifest: Manifest) -> str:
    """The state table as of ``manifest``: the base, overridden by the delta."""
    if manifest.grants_base is None:
        return _empty_select(GRANT_STATE_COLUMNS)
    base = f"read_parquet('{_sql_text(str(locate(manifest.grants_base)))}')"
    if not manifest.grants_delta:
        return f"SELECT * FROM {base}"
    delta = f"read_parquet('{_sql_text(str(locate(manifest.grants_delta)))}')"
    return (
        f"SELECT * FROM {delta} UNION ALL "
        f"SELECT b.* FROM {base} b ANTI JOIN {delta} d USING (grant_id)"
    )


def _merge_state_sql(fresh: str, current: str) -> str:
    """New state for the grants in ``fresh``, combined with what ``current`` held."""
    return f"""
WITH fresh AS ({fresh}),
old AS (SELECT c.* FROM ({current}) c SEMI JOIN fresh USING (grant_id))
{_combine_sql("SELECT * FROM fresh UNION ALL BY NAME SELECT * FROM old")}
"""


GRANTS_VIEW = """
SELECT grant_id,
    source,
    coalesce(created_agent_id, any_agent_id, auto_agent_id) AS agent_id,
    coalesce(created_principal_id, any_principal_id) AS principal_id,
    created_at,
    first_token_at,
    last_token_at,
    tokens_issued,
    agentless_tokens,
    agentless_exchange,
    agentless_refresh,
    agentless_first_at,
    agentless_last_at,
    CASE WHEN revoked_event_at IS NULL THEN auto_revoked_at
         WHEN auto_revoked_at IS NULL THEN revoked_event_at
         ELSE least(revoked_event_at, auto_revoked_at) END AS revoked_at,
    CASE WHEN revoked_by_field IS NOT NULL THEN revoked_by_field
         WHEN auto_revoked_at IS NOT NULL THEN 'system'
         WHEN revoked_event_at IS NOT NULL THEN 'unknown' END AS revoked_by,
    budget_50_at,
    budget_80_at,
    exhausted_at,
    initial_budget,
    first_budget_at,
    last_budget_at,
    budget_times,
    first_event_at,
    last_event_at,
    events
FROM ({states}) s
"""

EVENTS_VIEW = "SELECT * FROM {events}"


def view_statements(
    directory: Path, manifest: Manifest | None, locate: Locate | None = None
) -> list[str]:
    """CREATE VIEW statements for events, grants, rejected_events and ingest_runs.

    ``locate`` says where each file is read from (default: its path in ``directory``).
    """
    directory = directory.resolve()
    if locate is None:
        locate = directory.joinpath
    if manifest is None:
        manifest = Manifest()
    files = [locate(s.file) for s in manifest.segments]
    statements = [
        "CREATE OR REPLACE VIEW events AS "
        + EVENTS_VIEW.format(events=_events_from(files)).strip(),
        "CREATE OR REPLACE VIEW grants AS "
        + GRANTS_VIEW.format(states=_current_state_sql(locate, manifest)).strip(),
    ]
    for table, columns in TABLE_COLUMNS.items():
        known = manifest.tables.get(table)
        source = (
            f"SELECT * FROM read_parquet('{_sql_text(str(locate(known['file'])))}')"
            if known
            else _empty_select(columns)
        )
        statements.append(f"CREATE OR REPLACE VIEW {table} AS {source}")
    return statements


def views_sql(directory: Path, manifest: Manifest) -> str:
    header = (
        "-- The grantex-archive analytics views, for the copy as of "
        f"{manifest.refreshed_at}.\n"
        "-- Open in DuckDB with: duckdb -init views.sql   (or run this file in any session)\n"
        "SET TimeZone = 'UTC';\n"
    )
    return header + "".join(f"{s};\n" for s in view_statements(directory, manifest))


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _now_text() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
