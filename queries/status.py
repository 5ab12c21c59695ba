"""``status``: what the archive holds, how its ingest runs went, how much of the stream it
missed lately, the last reconcile and its open findings, the hash chain's head, the
analytics copy's state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ingest.database import first_line
from ingest.schema import chain_head, chain_links, ingest_runs
from ingest.seal.digests import summarise
from ingest.store import safe_url, sqlite_path
from ingest.timestamps import now_utc, utc

from .copy import (
    AnalyticsCopy,
    ArchiveMissing,
    ArchiveSchemaError,
    ArchiveUnavailable,
    ProgressFn,
    RefreshResult,
    archive_read_engine,
    open_copy,
)
from .coverage import status_coverage
from .session import rows_of

OK_OUTCOMES = ("idle", "max_runtime", "max_events", "interrupted", "handed_over")
"""The outcomes of runs that ended as they were asked to."""


@dataclass(frozen=True)
class Status:
    """What the archive holds, how its runs went, and the analytics copy's state."""

    rows: list[tuple[str, str, Any]]
    """(section, name, value), as ``grantex-archive status`` prints them."""
    last_success: datetime | None
    """When the newest run that ended as asked finished."""
    refreshed: RefreshResult | None = None
    """What refreshing the copy first did (None: not refreshed)."""

    @property
    def age_minutes(self) -> float | None:
        if self.last_success is None:
            return None
        return (now_utc() - self.last_success).total_seconds() / 60


def status(
    db_url: str,
    analytics_dir: Path | None = None,
    refresh: bool = True,
    progress: ProgressFn | None = None,
    now: datetime | None = None,
    digest_dir: Path | None = None,
) -> Status:
    """The archive's contents, its newest run and newest success, the stream's uncovered
    time in the 24 hours and 30 days before ``now`` (default: the current time), the
    chain's head and, with ``digest_dir``, its newest digest file, and the copy's
    freshness."""
    path = sqlite_path(db_url)
    if path is not None and not path.exists():
        raise ArchiveMissing(path)
    last_run, last_success = _runs(db_url)
    chain = _chain(db_url)
    opened = open_copy(db_url, analytics_dir, refresh, progress=progress)
    copy = opened.copy
    counts = _fetch(
        copy,
        "SELECT type, count(*), min(occurred_at), max(occurred_at) FROM events "
        "GROUP BY type ORDER BY count(*) DESC, type",
    )
    rows: list[tuple[str, str, Any]] = [
        ("archive", "database", safe_url(db_url)),
        ("archive", "events", sum(int(c[1]) for c in counts)),
        ("archive", "first_occurred_at", min((c[2] for c in counts), default=None)),
        ("archive", "last_occurred_at", max((c[3] for c in counts), default=None)),
        (
            "archive",
            "rejected_frames",
            int(_fetch(copy, "SELECT count(*) FROM rejected_events")[0][0]),
        ),
    ]
    rows += [("events", event_type, int(count)) for event_type, count, _f, _l in counts]
    if last_run is not None:
        for key in ("id", "source", "started_at", "finished_at", "outcome", "exit_code"):
            rows.append(("last_run", key, last_run[key]))
        rows.append(("last_run", "inserted", last_run["inserted"]))
        if last_run["error"]:
            rows.append(("last_run", "error", last_run["error"]))
    else:
        rows.append(("last_run", "id", None))
    result = Status(rows, last_success, opened.refreshed)
    rows.append(("last_success", "finished_at", last_success))
    if result.age_minutes is not None:
        rows.append(("last_success", "age_minutes", round(result.age_minutes, 1)))
    rows += status_coverage(copy, now if now is not None else now_utc())
    rows += _reconcile_rows(copy)
    rows += chain
    rows += _digest_rows(digest_dir, chain, now if now is not None else now_utc())
    manifest = copy.manifest()
    rows.append(("analytics", "directory", str(copy.directory)))
    rows.append(("analytics", "refreshed_at", manifest.refreshed_at if manifest else None))
    rows.append(("analytics", "events", manifest.events if manifest else 0))
    rows.append(("analytics", "size_bytes", copy.size_bytes()))
    return result


_LAST_RECONCILE = (
    "SELECT id, source, started_at, finished_at, outcome, findings FROM reconcile_runs "
    "ORDER BY started_at DESC, id DESC LIMIT 1"
)
# The open findings: those of the newest completed run of each source.
_OPEN_FINDINGS = """
SELECT f.kind, count(*) FROM reconcile_findings f
JOIN (SELECT source, max(id) AS id FROM reconcile_runs WHERE outcome = 'completed'
    GROUP BY source) n ON f.run_id = n.id
GROUP BY f.kind ORDER BY f.kind
"""


def _reconcile_rows(copy: AnalyticsCopy) -> list[tuple[str, str, Any]]:
    """The newest reconcile run, and the open findings per kind (``reconcile``)."""
    last = _fetch(copy, _LAST_RECONCILE)
    if not last:
        return [("last_reconcile", "id", None)]
    names = ("id", "source", "started_at", "finished_at", "outcome", "findings")
    rows = [("last_reconcile", name, value) for name, value in zip(names, last[0], strict=True)]
    return rows + [("open_findings", kind, int(n)) for kind, n in _fetch(copy, _OPEN_FINDINGS)]


def _fetch(copy: AnalyticsCopy, sql: str) -> list[tuple[Any, ...]]:
    with rows_of(copy, sql, {}) as (_columns, rows):
        return list(rows)


def _runs(db_url: str) -> tuple[dict[str, Any] | None, datetime | None]:
    """The newest run, and when the newest run that ended as asked finished."""
    engine = archive_read_engine(db_url)
    try:
        with engine.connect() as conn:
            last = conn.execute(
                sa.select(ingest_runs).order_by(ingest_runs.c.started_at.desc()).limit(1)
            ).first()
            success = conn.execute(
                sa.select(sa.func.max(ingest_runs.c.finished_at)).where(
                    sa.or_(
                        ingest_runs.c.exit_code == 0,
                        sa.and_(
                            ingest_runs.c.exit_code.is_(None),
                            ingest_runs.c.finished_at.is_not(None),
                            ingest_runs.c.outcome.in_(OK_OUTCOMES),
                        ),
                    )
                )
            ).scalar()
    except (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.ProgrammingError) as exc:
        if _has_no_runs_table(engine):
            raise ArchiveSchemaError(
                "the archive has no grantex-archive schema (was it downgraded?): "
                "run `grantex-archive db upgrade`"
            ) from None
        raise ArchiveUnavailable(f"database unusable: {first_line(exc)}") from None
    finally:
        engine.dispose()
    return (dict(last._mapping) if last is not None else None), utc(success)


def _chain(db_url: str) -> list[tuple[str, str, Any]]:
    """The hash chain's newest link, and what the archive held before the chain (``seal``)."""
    engine = archive_read_engine(db_url)
    try:
        with engine.connect() as conn:
            head = conn.execute(sa.select(chain_head)).first()
            newest = conn.execute(
                sa.select(chain_links.c.created_at).order_by(chain_links.c.n.desc()).limit(1)
            ).scalar()
    except sa.exc.SQLAlchemyError:
        return [("chain", "links", None)]
    finally:
        engine.dispose()
    if head is None:
        return [("chain", "links", None)]
    values = head._mapping
    waiting = int(values["unsealed_events"]) + int(values["unsealed_rejected"])
    return [
        ("chain", "links", int(values["n"])),
        ("chain", "head", values["hash"]),
        ("chain", "newest_link_at", utc(newest)),
        ("chain", "unsealed_before_chain", waiting),
    ]


DIGEST_DAYS = 7
"""Days of digest-file counts ``status --digest-dir`` shows (hourly files: 24 a day)."""


def _digest_rows(
    directory: Path | None, chain: list[tuple[str, str, Any]], now: datetime
) -> list[tuple[str, str, Any]]:
    """The newest digest file (path, time, the link it names, links written since), and
    the files written on each of the last :data:`DIGEST_DAYS` UTC days, 0 included."""
    if directory is None:
        return [("chain", "digest_files_checked", False)]
    found = summarise(directory)
    links = next((value for _s, name, value in chain if name == "links"), None)
    behind = None
    if links is not None and found.newest_link is not None:
        behind = max(int(links) - found.newest_link, 0)
    rows: list[tuple[str, str, Any]] = [
        ("chain", "digest_files_checked", True),
        ("chain", "digest_dir", str(directory)),
        ("chain", "digest_files", found.files),
        ("chain", "newest_digest_file", str(found.newest) if found.newest else None),
        ("chain", "newest_digest_at", found.newest_at),
        ("chain", "newest_digest_link", found.newest_link),
        ("chain", "links_after_newest_digest", behind),
    ]
    today = now.astimezone(timezone.utc).date()
    for back in range(DIGEST_DAYS - 1, -1, -1):
        day = today - timedelta(days=back)
        rows.append(("digest_files", day.isoformat(), found.per_day.get(day, 0)))
    return rows


def _has_no_runs_table(engine: sa.Engine) -> bool:
    try:
        return not sa.inspect(engine).has_table(ingest_runs.name)
    except sa.exc.SQLAlchemyError:
        return False
