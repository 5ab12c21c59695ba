"""One refresh of the copy, under the refresher lock: what is new in the archive, copied.

A refresh checks that the copy still matches the archive (or rebuilds it),
re-scans the archive's newest seq range for rows committed out of order,
copies the rows above the watermark, brings the grant state up to date,
merges small segments, re-reads the small tables when they changed, and
then replaces the manifest. Files the new manifest no longer names move to
``trash/`` and are deleted once no reader can still hold an older manifest.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from ingest.files import atomic_write_bytes

from .columns import SEGMENT_COLUMNS, TABLE_COLUMNS
from .errors import AnalyticsError
from .grant_files import GrantFiles
from .manifest import MANIFEST, Manifest, Segment, now_text, prune_checkpoints, read_manifest
from .reader import ArchiveReader
from .sql import file_list, parquet, sql_text
from .transfer import ProgressFn, copy_ranges, copy_table, publish, segment_name, write_segment
from .trash import Trash
from .views import views_sql

log = logging.getLogger(__name__)

# Smaller incremental segments are merged once SMALL_SEGMENTS_MAX of them are
# under SMALL_SEGMENT_ROWS.
SMALL_SEGMENT_ROWS = 250_000
SMALL_SEGMENTS_MAX = 8
# The re-scan looks at the archive's newest RESCAN_ROWS seq values, and at
# everything copied during the last RESCAN_SECONDS.
RESCAN_ROWS = 100_000
RESCAN_SECONDS = 300.0

# What changes in an archive table when its rows do: a small table is copied
# again when its marker differs (ingest_runs rows are updated as a run goes
# on; a rejected frame that arrives again raises its row's ``repeats``).
TABLE_MARKERS = {
    "rejected_events": "SELECT count(*), max(id), sum(repeats) FROM rejected_events",
    "ingest_runs": (
        "SELECT count(*), max(id), sum(received), sum(inserted), "
        "max(finished_at), count(finished_at), sum(length(outcome)), "
        "sum(length(error)) FROM ingest_runs"
    ),
    # A connection's row changes in place: its first byte, its progress
    # (last_seen_at), its end (closed_at, events, close_reason), and a killed
    # run's open connection closed by the next run.
    "ingest_connections": (
        "SELECT count(*), max(id), sum(events), count(status_code), "
        "count(first_byte_at), max(first_byte_at), count(last_seen_at), max(last_seen_at), "
        "count(closed_at), max(closed_at), sum(length(close_reason)) FROM ingest_connections"
    ),
    # A reconcile run's row is finished in place; its findings are only added.
    "reconcile_runs": (
        "SELECT count(*), max(id), count(finished_at), sum(findings), sum(observed), "
        "sum(length(outcome)) FROM reconcile_runs"
    ),
    "reconcile_findings": "SELECT count(*), max(id) FROM reconcile_findings",
    # Links are only appended (verify-archive, not the copy, looks for edits).
    "chain_links": "SELECT count(*), max(n) FROM chain_links",
}

_SUBDIRECTORIES = ("events", "grants", "tables", "trash")


@dataclass
class RefreshResult:
    """What a refresh did; ``waited`` means another refresher held the lock throughout."""

    rebuilt: bool
    new_rows: int
    rescued_rows: int
    seconds: float
    manifest: Manifest
    waited: bool = False
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


class _Laps:
    """Seconds spent in each step of a refresh, for the log and the benchmarks."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._clock = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = now - self._clock
        self._clock = now


class Refresher:
    """Brings the copy in ``directory`` up to the archive; the caller holds the lock."""

    def __init__(
        self, db_url: str, directory: Path, identity: str, progress: ProgressFn | None
    ) -> None:
        self.db_url = db_url
        self.dir = directory
        self.identity = identity
        self.progress = progress
        self.reader = ArchiveReader(db_url)
        self.duck = duckdb.connect(config={"threads": 2, "memory_limit": "600MB"})
        self._exec("SET TimeZone = 'UTC'")
        self._exec("SET preserve_insertion_order = false")
        tmp = self.dir / "tmp"
        self._exec(f"SET temp_directory = '{sql_text(str(tmp))}'")
        self.trash = Trash(directory)
        self.grants = GrantFiles(directory, self.duck, self.trash)

    def _exec(self, sql: str) -> list[tuple[Any, ...]]:
        return self.duck.execute(sql).fetchall()

    def close(self) -> None:
        self.reader.close()
        self.duck.close()
        shutil.rmtree(self.dir / "tmp", ignore_errors=True)

    # -- the steps

    def run(self, full: bool, started: float) -> RefreshResult:
        revision = self.reader.check_schema(self.duck)
        self._clear_temporaries()
        manifest, reason, archive_max = self._open(full, revision)
        rebuilt = manifest is None
        if manifest is None:
            self.trash.retire_all()
            manifest = Manifest(archive=self.identity, built_at=now_text(), schema=revision)
        laps = _Laps()
        new_rows, rescued = self._copy_events(manifest, archive_max, rebuilt, laps)
        self._compact_segments(manifest)
        laps.lap("compaction")
        self._refresh_tables(manifest)
        laps.lap("tables")
        self._commit(manifest, archive_max)
        laps.lap("manifest")
        log.debug("refresh timings: %s", {k: round(v, 3) for k, v in laps.timings.items()})
        return RefreshResult(
            rebuilt,
            new_rows,
            rescued,
            time.monotonic() - started,
            manifest,
            reason=reason,
            timings=laps.timings,
        )

    def _clear_temporaries(self) -> None:
        """Create the subdirectories; remove what a killed refresher was writing."""
        for sub in _SUBDIRECTORIES:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
            # Under the lock, a temporary file is what a killed refresher left.
            for stale in (self.dir / sub).glob("*.tmp"):
                stale.unlink(missing_ok=True)
        for stale in self.dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def _open(self, full: bool, revision: str) -> tuple[Manifest | None, str | None, int]:
        """The manifest to build on (None: rebuild), why not, and the archive's highest seq."""
        reason = None
        try:
            manifest = None if full else read_manifest(self.dir)
        except AnalyticsError as exc:
            reason, manifest = str(exc), None
        if manifest is not None:
            self.trash.retire_orphans(manifest)
        # No count(*): on a large archive it is a scan, and the seq range tells enough.
        (archive_max,) = self.reader.scalar_row("SELECT max(seq) FROM events", self.duck)
        archive_max = int(archive_max or 0)
        if manifest is not None:
            reason = self._mismatch(manifest, archive_max, revision)
            if reason is not None:
                log.warning("rebuilding the analytics copy: %s", reason)
                manifest = None
        return manifest, reason, archive_max

    def _copy_events(
        self, manifest: Manifest, archive_max: int, rebuilt: bool, laps: _Laps
    ) -> tuple[int, int]:
        """Add the new and the rescued rows as segments, and their grant state."""
        previous = manifest.watermark
        new_files: list[Segment] = []
        rescued = self._rescan(manifest, previous, new_files) if not rebuilt else 0
        laps.lap("rescan")
        copied = copy_ranges(
            self.db_url, self.dir, (self.reader, self.duck), previous, archive_max, self.progress
        )
        new_files += copied
        laps.lap("events")
        manifest.segments.extend(new_files)
        if new_files and not rebuilt:
            self.grants.update(manifest, new_files)
        elif new_files or manifest.grants_base is None:
            self.grants.build(manifest)
        laps.lap("grants")
        return sum(s.rows for s in copied), rescued

    def _commit(self, manifest: Manifest, archive_max: int) -> None:
        """Write the manifest and views.sql, then retire what they no longer name."""
        if archive_max > manifest.watermark:
            manifest.watermark = archive_max
        manifest.anchor_id = self._anchor(manifest.watermark)
        now = time.time()
        manifest.checkpoints.append((now, manifest.watermark))
        manifest.checkpoints = prune_checkpoints(manifest.checkpoints, now, RESCAN_SECONDS)
        manifest.refreshed_at = now_text()
        # Synced to disk: after a crash the copy's manifest is whole, never empty.
        atomic_write_bytes(self.dir / MANIFEST, manifest.to_json().encode())
        atomic_write_bytes(self.dir / "views.sql", views_sql(self.dir, manifest).encode())
        self.trash.move_retired()
        self.trash.empty()

    def _mismatch(self, manifest: Manifest, archive_max: int, revision: str) -> str | None:
        """Why the copy cannot be built on, or None."""
        if manifest.archive != self.identity:
            return "the copy was made from another archive"
        if manifest.schema != revision:
            # A migration may have rewritten archived rows (a backfill).
            return f"the archive's schema changed ({manifest.schema or 'unrecorded'} to {revision})"
        if archive_max < manifest.watermark:
            return "the archive holds fewer events than the copy (was it replaced?)"
        if manifest.watermark and self._anchor(manifest.watermark) != manifest.anchor_id:
            return "the archive's events differ from the copy's (was it replaced?)"
        for name in manifest.files():
            if not (self.dir / name).exists():
                return f"{name} is missing"
        if manifest.segments and self._file_columns(manifest.segments[0].file) != [
            name for name, _ in SEGMENT_COLUMNS
        ]:
            return "the archive's columns differ from the copy's (was its schema upgraded?)"
        return None

    def _file_columns(self, name: str) -> list[str]:
        """The column names of one of the copy's Parquet files (read from its footer)."""
        rows = self._exec(f"DESCRIBE SELECT * FROM {parquet(self.dir / name)}")
        return [str(row[0]) for row in rows]

    def _anchor(self, seq: int) -> str | None:
        if not seq:
            return None
        rows = self.reader.rows(f"SELECT id FROM events WHERE seq = {int(seq)}", self.duck)
        return str(rows[0][0]) if rows else None

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
        files = [self.dir / s.file for s in manifest.segments if s.max_seq > lo]
        missing = self._missing_seqs(lo, previous, files)
        rescued = 0
        for start in range(0, len(missing), 5000):
            chunk = missing[start : start + 5000]
            where = f"seq IN ({', '.join(map(str, chunk))})"
            segment = write_segment(self.dir, self.reader, self.duck, where)
            if segment is not None:
                log.info("re-scan found %d rows committed out of seq order", segment.rows)
                out.append(segment)
                rescued += segment.rows
        return rescued

    def _missing_seqs(self, lo: int, hi: int, files: list[Path]) -> list[int]:
        """The archive's seq values in (lo, hi] that ``files`` do not hold, in order."""
        stream = self.reader.stream(f"SELECT seq FROM events WHERE seq > {lo} AND seq <= {hi}")
        try:
            self.duck.from_arrow(stream).create_view("archive_seqs", replace=True)
            if files:
                held = (
                    f"SELECT seq FROM read_parquet({file_list(files)}) "
                    f"WHERE seq > {lo} AND seq <= {hi}"
                )
            else:
                held = "SELECT NULL::BIGINT AS seq WHERE false"
            return [
                int(r[0])
                for r in self._exec(
                    f"SELECT seq FROM archive_seqs ANTI JOIN ({held}) h USING (seq) ORDER BY seq"
                )
            ]
        finally:
            stream.close()

    # -- segments and small tables

    def _compact_segments(self, manifest: Manifest) -> None:
        small = [s for s in manifest.segments if s.rows < SMALL_SEGMENT_ROWS]
        if len(small) < SMALL_SEGMENTS_MAX:
            return
        files = [self.dir / s.file for s in small]
        tmp = self.dir / f"events/part-{secrets.token_hex(8)}.parquet.tmp"
        self._exec(
            f"COPY (SELECT * FROM read_parquet({file_list(files)}) ORDER BY seq) "
            f"TO '{sql_text(str(tmp))}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000)"
        )
        lo = min(s.min_seq for s in small)
        hi = max(s.max_seq for s in small)
        rows = sum(s.rows for s in small)
        final = segment_name(lo, hi)
        publish(tmp, self.dir / final)
        keep = [s for s in manifest.segments if s.rows >= SMALL_SEGMENT_ROWS]
        manifest.segments = sorted([*keep, Segment(final, rows, lo, hi)], key=lambda s: s.min_seq)
        self.trash.retire(*(s.file for s in small))

    def _refresh_tables(self, manifest: Manifest) -> None:
        """Copy each small table again when its marker or its columns changed."""
        for table, columns in TABLE_COLUMNS.items():
            marker = [str(v) for v in self.reader.scalar_row(TABLE_MARKERS[table], self.duck)]
            known = manifest.tables.get(table)
            if (
                known
                and known.get("marker") == marker
                and self._file_columns(known["file"]) == [name for name, _ in columns]
            ):
                continue
            name = f"tables/{table}-{secrets.token_hex(8)}.parquet"
            tmp = self.dir / f"{name}.tmp"
            if not (table == "chain_links" and known and self._append_links(known, marker, tmp)):
                copy_table(self.reader, self.duck, table, columns, "1 = 1", tmp)
            publish(tmp, self.dir / name)
            if known:
                self.trash.retire(known["file"])
            manifest.tables[table] = {"file": name, "marker": marker}

    def _append_links(self, known: dict[str, Any], marker: list[str], tmp: Path) -> bool:
        """Write to ``tmp`` the copied links and the archive's links above them; False
        (nothing written) unless that gives every link the archive holds.

        Links are only appended, one per sealing transaction, so the table grows with
        the archive; and on SQLite reading ``created_at`` of every link reads every
        digest stored before it. Only the new links are read from the archive."""
        copied, top = known["marker"][0], known["marker"][1]
        if not copied.isdigit() or not top.isdigit() or not marker[0].isdigit():
            return False
        part = tmp.with_name(f"{tmp.name}.new.tmp")
        columns = TABLE_COLUMNS["chain_links"]
        copy_table(self.reader, self.duck, "chain_links", columns, f"n > {int(top)}", part)
        try:
            ((added,),) = self._exec(f"SELECT count(*) FROM {parquet(part)}")
            if int(copied) + int(added) != int(marker[0]):
                return False  # links removed or renumbered: copy them all again
            self._exec(
                f"COPY (SELECT * FROM {parquet(self.dir / known['file'])} UNION ALL "
                f"SELECT * FROM {parquet(part)}) TO '{sql_text(str(tmp))}' "
                "(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000)"
            )
            return True
        finally:
            part.unlink(missing_ok=True)
