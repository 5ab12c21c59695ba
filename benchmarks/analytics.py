"""Analytics benchmark: the DuckDB copy and its reports over a large SQLite archive.

Run with ``make bench-analytics`` (10,000,000 events) or
``python -m benchmarks.analytics --help``. Method, in one run:

- **Archive.** N events from the simulator (``generate_events``, the mixed
  envelope: live and documented grants alternate) spread over 90 days,
  normalised by the ingest code and inserted with plain ``sqlite3`` into the
  archive schema (``ingest.migrate.upgrade``), 200,000 rows per transaction.
  ``ingest_runs`` is what a cron worker every five minutes leaves: one run per
  five-minute window of ``occurred_at`` (one window in 500 is missed, so the
  next run covers two and a gap shows), and one ``rejected_events`` row in
  every fifth run; each run's ``ingest_connections`` are one 200 stream over
  the run, some runs first refused (503, or no answer) and some reconnecting
  half-way (see ``run_connections``). The file is cached in
  ``benchmarks/.work/`` by size and seed; rows this script appends are
  deleted again at the start and end of each run.
- **Full refresh.** A child process builds a fresh analytics copy
  (``AnalyticsCopy.refresh(full=True)``); its own ``VmHWM`` is its peak RSS.
- **Appended events.** Later than the archive's newest, in time order: half
  from the simulator with another seed (so only new grants), half follow-ups
  for existing grants sampled at random points of the archive's whole seq
  range (not revoked by a grant.revoked yet), each in its grant's envelope:
  ``token.issued`` (live with agentId; documented without agentId, method
  exchange/refresh), ``budget.threshold`` (50/80, for budget grants below that
  level), ``budget.exhausted``, ``grant.revoked`` (live without revokedBy,
  documented with revokedBy developer/principal) and ``anomaly.auto_revoked``
  listing 1-3 of an agent's live grants. So the grants the refresh merges
  overlap the whole existing grants table, not just its newest ids.
- **Incremental refresh.** 100,000 such events are appended to the archive; a
  child process refreshes the copy. A second child then refreshes with nothing
  new (what ``report`` pays before every run).
- **Reports.** A child process opens one ``Session`` and runs each named
  report with default options (and ``--by agent`` / ``--by month`` where the
  report takes them), all at one ``now``: once cold, then N times; the median
  of the N is the warm latency, shown with the fastest and slowest. A run ends
  with the whole result fetched as an Arrow table (DuckDB's own result form;
  the CLI's CSV writer never turns rows into Python objects either).
- **SQLite over state built in advance.** What the analytics copy holds
  precomputed, the per-grant state (with each grant's first revocation, its
  budget activity and whether it is delegated) and each token's kind, is built
  once by ``SQLITE_STATE_BUILD`` into tables of a scratch SQLite file with the
  archive attached read-only (one number: the state build's seconds). The
  same reports written by hand for SQLite (``SQLITE_REPORTS``) read those
  tables and the archive, at the same ``now``: once cold, then N warm runs,
  all rows fetched as tuples (SQLite's own form), each under a timeout.
  Speedup = SQLite's warm median / DuckDB's. Results are compared row by row
  with DuckDB's; a difference in any report fails a run of up to 1,000,000
  events.
- **Each side building.** Over the reports with a SQLite equivalent, each run
  once: the sum of warm medians alone; with each side's build added (DuckDB:
  the full refresh; SQLite: its state build); and per refresh over a day of
  cron refreshes every five minutes (DuckDB: the full refresh plus 288
  incremental refreshes of the measured size, divided by 288; SQLite: its
  state build at every refresh, having no incremental form).
- **Concurrency.** A child process loops: append 20,000 events (the same
  mix), refresh the copy. Meanwhile the real CLI (``python -m ingest.cli
  report NAME --format csv``) runs each report several times, with and without
  ``--no-refresh``; a non-zero exit, an empty output or ``lock``/``Error`` on
  stderr is a failure.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb

from benchmarks.ingest import PeakRss, run_measured
from benchmarks.machine import facts_line
from benchmarks.results import write_section
from ingest import migrate
from ingest.events import Event, normalise
from ingest.rows import plain_row
from ingest.schema import EVENT_COLUMNS
from ingest.simulator import generate_events
from ingest.timestamps import format_timestamp
from queries.token_kinds import CROCKFORD, INITIAL_WINDOW_MS, token_lag_ms

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / ".work"
CHILD = "_child"
BUILD_VERSION = 3  # bump when the archive's contents change, to invalidate the cache

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
SPAN_DAYS = 90
CHUNK_ROWS = 200_000
APPEND_ROWS = 100_000
CHURN_ROWS = 20_000
SOURCE = "default"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"

# Targets (2-core machine).
WARM_TARGET_S = 0.5
SPEEDUP_TARGET = 10.0
INCREMENTAL_TARGET_S = 2.0
FULL_TARGET_S = 60.0
FULL_TARGET_EVENTS = 10_000_000
RSS_TARGET_MB = 1024.0

Row = tuple[Any, ...]


# --------------------------------------------------------------------------- archive


@dataclass
class Archive:
    """The cached SQLite archive and what it held when it was built."""

    path: Path
    events: int
    max_seq: int
    runs: int
    rejected: int
    spacing_s: float

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    @property
    def meta_path(self) -> Path:
        return self.path.with_suffix(".json")


def archive_row(event: Event, received: str) -> Row:
    return plain_row(event, SOURCE, received)


def envelope_row(envelope: dict[str, Any], received: str) -> Row:
    """The archive row the ingest code makes of one envelope."""
    event = normalise(json.dumps(envelope, separators=(",", ":")))
    assert isinstance(event, Event), event
    return archive_row(event, received)


def simulator_rows(
    seed: int, start: datetime, count: int, spacing_s: float, received: str
) -> Iterator[Row]:
    """Archive rows for ``count`` simulator events (mixed envelope), in time order."""
    for envelope in generate_events(seed, start, count, spacing_s, "mixed"):
        yield envelope_row(envelope, received)


def chunked(rows: Iterable[Row]) -> Iterator[list[Row]]:
    chunk: list[Row] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def event_chunks(seed: int, start: datetime, count: int, spacing_s: float) -> Iterator[list[Row]]:
    """Archive rows for ``count`` simulator events, ``CHUNK_ROWS`` at a time."""
    received = (start + timedelta(seconds=count * spacing_s)).strftime(TIME_FORMAT)
    return chunked(simulator_rows(seed, start, count, spacing_s, received))


_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in EVENT_COLUMNS)})"
)
_INSERT_RUN = (
    "INSERT INTO ingest_runs (source, started_at, finished_at, since_requested, types, base_url, "
    "received, inserted, duplicates, rejected, reconnects, first_occurred_at, last_occurred_at, "
    "outcome, exit_code) VALUES (?, ?, ?, NULL, NULL, 'http://127.0.0.1/', ?, ?, 0, ?, ?, ?, ?, "
    "'idle', 0)"
)
_INSERT_CONNECTION = (
    "INSERT INTO ingest_connections (run_id, requested_at, first_byte_at, last_seen_at, "
    "closed_at, since_requested, status_code, events, close_reason) "
    "VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)"
)
_INSERT_REJECTED = (
    "INSERT INTO rejected_events (source, received_at, reason, raw, raw_length, event_id, run_id) "
    "VALUES (?, ?, 'invalid JSON: unexpected end of data', '{\"id\":', 6, NULL, ?)"
)


# A cron worker every CRON_SECONDS; one window in MISSED_EVERY passes without a
# run (the next covers both), and every REJECT_EVERY-th run rejected a frame.
CRON_SECONDS = 300
MISSED_EVERY = 500
REJECT_EVERY = 5
# Its ``ingest_connections``: each run streams (200) from just after it starts
# to its end. Every REFUSED_EVERY-th run is first answered 503 and every
# NO_ANSWER_EVERY-th cannot connect once, both before its stream (so the gap
# before it counts failed attempts); every RECONNECT_EVERY-th run's stream
# ends half-way and it reconnects (a gap within one run).
REFUSED_EVERY = 7
NO_ANSWER_EVERY = 11
RECONNECT_EVERY = 13
_MS = timedelta(milliseconds=1)


def run_connections(run: int, started: datetime, finished: datetime, events: int) -> list[Row]:
    """The connection rows of the ``run``-th run, as ``ingest.run_record`` writes them.

    Each row: requested_at, first_byte_at, last_seen_at, closed_at, status_code,
    events, close_reason (times as archive text; a run lasts at least 3 s).
    """
    at = started + 100 * _MS
    rows: list[tuple[Any, ...]] = []
    if run % REFUSED_EVERY == 0:
        answered = at + 30 * _MS
        rows.append((at, answered, None, answered, 503, 0, "HTTP 503: service unavailable"))
        at += 500 * _MS
    if run % NO_ANSWER_EVERY == 0:
        reason = "cannot connect: ConnectError: [Errno 111] Connection refused"
        rows.append((at, None, None, at + 2 * _MS, None, 0, reason))
        at += 500 * _MS
    streams = [(at, finished, events, "stopped")]
    if run % RECONNECT_EVERY == 0:
        middle = at + (finished - at) / 2
        half = events // 2
        streams = [
            (at, middle, half, "end of stream"),
            (middle + 200 * _MS, finished, events - half, "stopped"),
        ]
    for opened, closed, count, reason in streams:
        rows.append((opened, opened + 20 * _MS, closed, closed, 200, count, reason))
    return [
        tuple(x.strftime(TIME_FORMAT) if isinstance(x, datetime) else x for x in row)
        for row in rows
    ]


class CronRuns:
    """``ingest_runs`` rows as a five-minute cron worker would have left them."""

    def __init__(self) -> None:
        self.window: int | None = None
        self.count = 0
        self.first = self.last = ""
        self.runs = 0

    def add(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        for row in rows:
            text = str(row[3])
            moment = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
            window = int(moment.timestamp()) // CRON_SECONDS
            changed = self.window is not None and window != self.window
            if changed and window % MISSED_EVERY != 0:
                self.flush(conn, self.window)
            if self.count == 0:
                self.first = text
            self.window = window
            self.count += 1
            self.last = text

    def flush(self, conn: sqlite3.Connection, window: int | None = None) -> None:
        """Record the run that received the events so far (after ``window``)."""
        if not self.count:
            return
        window = self.window if window is None else window
        assert window is not None
        start = datetime.fromtimestamp((window + 1) * CRON_SECONDS, timezone.utc)
        started = start + timedelta(seconds=1)
        finished = start + timedelta(seconds=4 + self.count / 200)
        self.runs += 1
        rejected = 1 if self.runs % REJECT_EVERY == 0 else 0
        connections = run_connections(self.runs, started, finished, self.count)
        reconnects = sum(1 for row in connections if row[4] == 200) - 1
        cursor = conn.execute(
            _INSERT_RUN,
            (SOURCE, started.strftime(TIME_FORMAT), finished.strftime(TIME_FORMAT),
             self.count + rejected, self.count, rejected, reconnects, self.first, self.last),
        )  # fmt: skip
        run_id = cursor.lastrowid
        conn.executemany(_INSERT_CONNECTION, [(run_id, *row) for row in connections])
        if rejected:
            conn.execute(_INSERT_REJECTED, (SOURCE, finished.strftime(TIME_FORMAT), run_id))
        self.count = 0


def insert_chunk(conn: sqlite3.Connection, rows: list[Row], runs: CronRuns) -> None:
    """One transaction: the rows, and the ingest runs that received them."""
    with conn:
        conn.executemany(_INSERT_EVENT, rows)
        runs.add(conn, rows)


def open_writer(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def build_archive(path: Path, count: int, seed: int) -> Archive:
    building = path.with_suffix(".building")
    for stale in (building, *(Path(f"{building}{s}") for s in ("-wal", "-shm"))):
        stale.unlink(missing_ok=True)
    migrate.upgrade(f"sqlite:///{building}")
    spacing = SPAN_DAYS * 86400 / count
    conn = open_writer(building)
    started = time.perf_counter()
    done = 0
    runs = CronRuns()
    for rows in event_chunks(seed, START, count, spacing):
        insert_chunk(conn, rows, runs)
        done += len(rows)
        rate = done / (time.perf_counter() - started)
        print(f"\r  archive: {done:,} of {count:,} events ({rate:,.0f}/s)", end="", flush=True)
    with conn:
        runs.flush(conn)
    print(flush=True)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    max_seq, runs, rejected = conn.execute(
        "SELECT (SELECT max(seq) FROM events), (SELECT count(*) FROM ingest_runs), "
        "(SELECT count(*) FROM rejected_events)"
    ).fetchone()
    conn.close()
    os.replace(building, path)
    archive = Archive(path, count, int(max_seq), int(runs), int(rejected), spacing)
    meta = {k: v for k, v in vars(archive).items() if k != "path"}
    archive.meta_path.write_text(json.dumps(meta))
    return archive


def ensure_archive(count: int, seed: int, rebuild: bool) -> Archive:
    """The cached archive for ``count`` and ``seed``, built when missing."""
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"archive-v{BUILD_VERSION}-{count}-{seed}.db"
    meta = path.with_suffix(".json")
    if not rebuild and path.exists() and meta.exists():
        return Archive(path, **json.loads(meta.read_text()))
    path.unlink(missing_ok=True)
    print(f"building a {count:,}-event archive (cached in {WORK})...", flush=True)
    started = time.perf_counter()
    archive = build_archive(path, count, seed)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    return archive


def reset_archive(archive: Archive) -> None:
    """Delete whatever earlier runs appended, so every run starts from the same archive."""
    conn = open_writer(archive.path)
    (max_seq,) = conn.execute("SELECT max(seq) FROM events").fetchone()
    if max_seq != archive.max_seq:
        with conn:
            conn.execute("DELETE FROM events WHERE seq > ?", (archive.max_seq,))
            conn.execute("DELETE FROM rejected_events WHERE id > ?", (archive.rejected,))
            conn.execute("DELETE FROM ingest_connections WHERE run_id > ?", (archive.runs,))
            conn.execute("DELETE FROM ingest_runs WHERE id > ?", (archive.runs,))
            conn.execute(
                "UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (archive.max_seq,)
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def archive_end(conn: sqlite3.Connection) -> datetime:
    """The newest occurred_at among the last rows appended."""
    (text,) = conn.execute(
        "SELECT max(occurred_at) FROM (SELECT occurred_at FROM events ORDER BY seq DESC LIMIT 1000)"
    ).fetchone()
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def archive_bytes(path: Path) -> int:
    """The archive's size without free pages (rows this script deleted leave some)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    (size,) = conn.execute("PRAGMA page_size").fetchone()
    conn.close()
    return int((pages - free) * size)


# --------------------------------------------------------------------------- appended events

# Of the events appended after the archive is built, the share that concern
# grants already in the archive (follow-ups); the rest come from a new
# simulator seed and so only create new grants.
FOLLOW_UP_SHARE = 0.5
# Existing grants are sampled by seq: the first grant.created at or after a
# random seq, looking this many rows ahead.
SAMPLE_WINDOW = 64
BUDGETS = (5, 10, 20, 25, 50, 100, 250, 500)
ANOMALY_REASONS = ("velocity_spike", "scope_escalation", "geo_anomaly", "budget_burn_rate")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class KnownGrant:
    """A grant sampled from the archive, and what its events so far say about it."""

    grant_id: str
    agent_id: str
    principal_id: str | None
    scopes: list[str]
    live: bool  # its grant.created came in the live envelope (createdAt, no method)
    budget_pct: float  # highest budget level reached: 0, 50, 80 or 100 (exhausted)
    initial: float | None  # the budget's initial amount, when an event carried it


# "+type": walk the seq range instead of the (type, occurred_at) index.
_SAMPLE_CREATED = (
    "SELECT grant_id, agent_id, principal_id, payload FROM events "
    "WHERE seq BETWEEN ? AND ? AND +type = 'grant.created' AND grant_id IS NOT NULL "
    "AND agent_id IS NOT NULL ORDER BY seq LIMIT 1"
)
_GRANT_EVENTS = "SELECT type, percentage, initial FROM events WHERE grant_id = ?"


def sample_grants(
    conn: sqlite3.Connection, count: int, rng: random.Random, seen: set[str]
) -> list[KnownGrant]:
    """Up to ``count`` grants created at random points of the archive's whole seq range.

    Grants in ``seen`` are skipped and the rest added to it; so are grants that a
    grant.revoked event already revoked. Each carries its budget level so far.
    """
    (max_seq,) = conn.execute("SELECT max(seq) FROM events").fetchone()
    out: list[KnownGrant] = []
    for _ in range(4 * count):
        if len(out) >= count:
            break
        seq = rng.randint(1, int(max_seq))
        row = conn.execute(_SAMPLE_CREATED, (seq, seq + SAMPLE_WINDOW - 1)).fetchone()
        if row is None or row[0] in seen:
            continue
        grant_id, agent_id, principal_id, payload = row
        seen.add(grant_id)
        revoked, pct, initial = False, 0.0, None
        for kind, percentage, amount in conn.execute(_GRANT_EVENTS, (grant_id,)):
            if kind == "grant.revoked":
                revoked = True
            elif kind == "budget.exhausted":
                pct = 100.0
            elif kind == "budget.threshold" and percentage is not None:
                pct = max(pct, float(percentage))
            if amount is not None:
                initial = float(amount)
        if revoked:
            continue
        envelope = json.loads(payload)
        scopes = envelope.get("data", {}).get("scopes") or []
        live = "createdAt" in envelope
        out.append(KnownGrant(grant_id, agent_id, principal_id, scopes, live, pct, initial))
    return out


def ulid_like(ms: int, rng: random.Random) -> str:
    """26 Crockford symbols: 48 bits of milliseconds, then 80 random bits."""
    value = (ms << 80) | rng.getrandbits(80)
    return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def ms_text(ms: int) -> str:
    return format_timestamp(EPOCH + timedelta(milliseconds=ms))


def follow_up_plan(grant: KnownGrant, rng: random.Random) -> list[str]:
    """What happens next to ``grant``: token refreshes, budget debits, maybe a revocation."""
    steps: list[str] = []
    if "budget:spend" in grant.scopes:
        for level, step in ((50.0, "budget.50"), (80.0, "budget.80"), (100.0, "exhausted")):
            if grant.budget_pct >= level:
                continue
            if rng.random() < 0.15:  # one debit can skip a level
                continue
            steps.append(step)
            if rng.random() < 0.45:
                break
    for _ in range(1 + (rng.random() < 0.4) + (rng.random() < 0.15)):
        steps.insert(rng.randrange(len(steps) + 1), "token")
    if rng.random() < 0.3:
        steps.append("auto" if grant.live and rng.random() < 0.25 else "revoke")
    return steps


@dataclass
class AppendMix:
    """What one append added."""

    new: int = 0  # simulator events from a new seed (new grants only)
    follow_ups: Counter[str] = field(default_factory=Counter)  # by event type
    detail: Counter[str] = field(default_factory=Counter)  # token methods, revokers, ...
    grants: int = 0  # existing grants that the follow-ups name

    @property
    def total(self) -> int:
        return self.new + sum(self.follow_ups.values())


def describe_mix(mix: AppendMix) -> str:
    """One sentence on what an append added."""
    f, d = mix.follow_ups, mix.detail
    follow = sum(f.values())
    parts = [
        f"token.issued {f['token.issued']:,} (live, with agentId: "
        f"{d['live token.issued (agentId, no method)']:,}; documented, without agentId: "
        f"{d['documented token.issued, exchange']:,} exchange, "
        f"{d['documented token.issued, refresh']:,} refresh)",
        f"budget.threshold {f['budget.threshold']:,}",
        f"budget.exhausted {f['budget.exhausted']:,}",
        f"grant.revoked {f['grant.revoked']:,} (live, no revokedBy: "
        f"{d['grant.revoked without revokedBy']:,}; documented: "
        f"{d['grant.revoked by developer']:,} by developer, "
        f"{d['grant.revoked by principal']:,} by principal)",
        f"anomaly.auto_revoked {f['anomaly.auto_revoked']:,} "
        f"(listing {d['grants auto-revoked']:,} grants)",
    ]
    return (
        f"{mix.new:,} from a new simulator seed (new grants only) and "
        f"{follow:,} follow-ups for {mix.grants:,} existing grants sampled across the "
        f"archive's whole seq range — " + ", ".join(parts)
    )


class FollowUps:
    """Envelopes for events about grants already in the archive."""

    def __init__(self, conn: sqlite3.Connection, rng: random.Random) -> None:
        self.conn = conn
        self.rng = rng
        self.seen: set[str] = set()
        self.pool: list[KnownGrant] = []
        self.by_agent: dict[str, list[KnownGrant]] = {}
        self.taken: set[str] = set()

    def next_grant(self) -> KnownGrant:
        while True:
            if not self.pool:
                fresh = sample_grants(self.conn, 2000, self.rng, self.seen)
                if not fresh:
                    raise RuntimeError("no unrevoked grants left to sample in the archive")
                self.pool = fresh[::-1]
                for grant in fresh:
                    if grant.live:
                        self.by_agent.setdefault(grant.agent_id, []).append(grant)
            grant = self.pool.pop()
            if grant.grant_id not in self.taken:
                self.taken.add(grant.grant_id)
                return grant

    def envelopes(
        self, count: int, start_ms: int, end_ms: int, mix: AppendMix
    ) -> list[tuple[int, dict[str, Any]]]:
        """``count`` (time, envelope) pairs between ``start_ms`` and ``end_ms``, in time order."""
        rng = self.rng
        out: list[tuple[int, dict[str, Any]]] = []
        while len(out) < count:
            grant = self.next_grant()
            mix.grants += 1
            steps = follow_up_plan(grant, rng)[: count - len(out)]
            # A grant's follow-ups fall within an hour (its tokens' lifetime).
            first = rng.randrange(start_ms, end_ms)
            last = min(end_ms, first + 3_600_000)
            times = sorted(rng.randrange(first, last) for _ in steps)
            for step, ms in zip(steps, times, strict=True):
                kind, data = self.event(grant, step, ms, mix)
                envelope = {
                    "id": "evt_" + ulid_like(ms, rng),
                    "type": kind,
                    "createdAt" if grant.live else "timestamp": ms_text(ms),
                    "data": data,
                }
                out.append((ms, envelope))
                mix.follow_ups[kind] += 1
        out.sort(key=lambda pair: pair[0])
        return out

    def event(
        self, grant: KnownGrant, step: str, ms: int, mix: AppendMix
    ) -> tuple[str, dict[str, Any]]:
        """The type and data of one follow-up event, in the grant's own envelope."""
        rng = self.rng
        gid = grant.grant_id
        if step == "token":
            token = "tok_" + ulid_like(ms - rng.randrange(12), rng)
            if grant.live:
                mix.detail["live token.issued (agentId, no method)"] += 1
                return "token.issued", {
                    "tokenId": token,
                    "grantId": gid,
                    "agentId": grant.agent_id,
                    "principalId": grant.principal_id,
                    "scopes": grant.scopes,
                    "expiresAt": ms_text(ms + 3_600_000),
                }
            method = "exchange" if rng.random() < 0.2 else "refresh"
            mix.detail[f"documented token.issued, {method}"] += 1
            return "token.issued", {"grantId": gid, "tokenId": token, "method": method}
        if step in ("budget.50", "budget.80"):
            if grant.initial is None:
                grant.initial = float(BUDGETS[rng.randrange(len(BUDGETS))])
            pct = 50 if step == "budget.50" else 80
            grant.budget_pct = float(pct)
            low, high = (0.2, 0.5) if pct == 50 else (0.0, 0.2)
            cents = int(grant.initial * 100 * (low + rng.random() * (high - low)))
            if grant.live:
                remaining = f"{cents // 100}.{cents % 100:02d}00"
                return "budget.threshold", {"grantId": gid, "pct": pct, "remaining": remaining}
            return "budget.threshold", {
                "grantId": gid,
                "percentage": float(pct),
                "remaining": cents / 100,
                "initial": grant.initial,
            }
        if step == "exhausted":
            grant.budget_pct = 100.0
            if grant.live:
                return "budget.exhausted", {"grantId": gid, "remaining": "0"}
            if grant.initial is None:
                grant.initial = float(BUDGETS[rng.randrange(len(BUDGETS))])
            return "budget.exhausted", {"grantId": gid, "initial": grant.initial}
        if step == "revoke":
            if grant.live:
                mix.detail["grant.revoked without revokedBy"] += 1
                return "grant.revoked", {"grantId": gid, "cascade": False}
            who = "developer" if rng.random() < 0.6 else "principal"
            mix.detail[f"grant.revoked by {who}"] += 1
            return "grant.revoked", {"grantId": gid, "revokedBy": who}
        # An anomaly takes out up to two more of the agent's live grants.
        victims = [gid]
        others = self.by_agent.get(grant.agent_id, [])
        for _ in range(rng.randrange(3)):
            while others and others[-1].grant_id in self.taken:
                others.pop()
            if not others:
                break
            other = others.pop()
            self.taken.add(other.grant_id)
            mix.grants += 1
            victims.append(other.grant_id)
        mix.detail["grants auto-revoked"] += len(victims)
        reason = ANOMALY_REASONS[rng.randrange(len(ANOMALY_REASONS))]
        return "anomaly.auto_revoked", {
            "agentId": grant.agent_id,
            "reason": reason,
            "revokedGrants": victims,
        }


def append_events(path: Path, count: int, seed: int, spacing_s: float) -> AppendMix:
    """Append ``count`` events, ``spacing_s`` apart on average, after the archive's newest.

    ``FOLLOW_UP_SHARE`` of them are follow-ups for existing grants sampled across the
    whole archive; the rest come from the simulator with ``seed`` (new grants only).
    The two are interleaved in time order.
    """
    conn = open_writer(path)
    start = archive_end(conn) + timedelta(seconds=spacing_s)
    span_s = count * spacing_s
    received = (start + timedelta(seconds=span_s)).strftime(TIME_FORMAT)
    mix = AppendMix()
    follow = round(count * FOLLOW_UP_SHARE)
    mix.new = count - follow
    start_ms = (start - EPOCH) // timedelta(milliseconds=1)
    end_ms = start_ms + max(1, int(span_s * 1000))
    rng = random.Random(f"benchmark-follow-ups-{seed}")
    later = FollowUps(conn, rng).envelopes(follow, start_ms, end_ms, mix)
    old = (envelope_row(envelope, received) for _, envelope in later)
    new = simulator_rows(seed, start, mix.new, span_s / max(1, mix.new), received)
    # Both are in time order; occurred_at text sorts as time does.
    runs = CronRuns()
    for rows in chunked(heapq.merge(new, old, key=lambda row: str(row[3]))):
        insert_chunk(conn, rows, runs)
    with conn:
        runs.flush(conn)
    conn.close()
    return mix


# --------------------------------------------------------------------------- child processes


def own_peak_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


@dataclass
class ChildRun:
    data: dict[str, Any]
    wall: float
    rss_mb: float


def child_command(mode: str, **kwargs: Any) -> list[str]:
    return [sys.executable, "-m", "benchmarks.analytics", CHILD, mode, json.dumps(kwargs)]


def finish_child(proc: subprocess.Popen[str], peak: PeakRss, started: float) -> ChildRun:
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    peak.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{err[-4000:]}")
    line = next(x for x in reversed(out.splitlines()) if x.startswith("RESULT "))
    data = json.loads(line[len("RESULT ") :])
    rss_kb = max(peak.kb, int(data.pop("peak_kb", 0)))
    return ChildRun(data, wall, rss_kb / 1024)


def start_child(mode: str, **kwargs: Any) -> tuple[subprocess.Popen[str], PeakRss, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        child_command(mode, **kwargs),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, PeakRss(proc.pid), started


def run_child(mode: str, **kwargs: Any) -> ChildRun:
    return finish_child(*start_child(mode, **kwargs))


def child_refresh(db_url: str, directory: str, full: bool) -> dict[str, Any]:
    from queries.copy import AnalyticsCopy

    copy = AnalyticsCopy(db_url, Path(directory))
    result = copy.refresh(full=full)
    manifest = result.manifest
    return {
        "seconds": result.seconds,
        "new_rows": result.new_rows,
        "rebuilt": result.rebuilt,
        "events": manifest.events,
        "segments": len(manifest.segments),
        "grants": manifest.grants_base_rows + manifest.grants_delta_rows,
        "copy_bytes": copy.size_bytes(),
        # Seconds per refresh phase, where this version of the copy reports them.
        "phases": getattr(result, "timings", {}),
    }


def report_variants() -> list[tuple[str, str | None]]:
    """Each report with its default options, plus --by agent / --by month where taken."""
    from queries.reports import load_reports

    out: list[tuple[str, str | None]] = []
    for name, report in load_reports().items():
        out.append((name, None))
        if "agent" in report.by:
            out.append((name, "agent"))
        if name == "event-volume":
            out.append((name, "month"))
    return out


def timed_query(conn: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> float:
    started = time.perf_counter()
    conn.execute(sql, params).to_arrow_table()
    return time.perf_counter() - started


def child_reports(db_url: str, directory: str, runs: int, now: str) -> dict[str, Any]:
    from queries.api import prepare_report
    from queries.copy import AnalyticsCopy
    from queries.session import Session

    at = datetime.fromisoformat(now)
    started = time.perf_counter()
    session = Session(AnalyticsCopy(db_url, Path(directory)))
    opened = time.perf_counter() - started
    timings = []
    for name, by in report_variants():
        sql, params = prepare_report(name, by=by, now=at)
        cold = timed_query(session.conn, sql, params)
        warm = [timed_query(session.conn, sql, params) for _ in range(runs)]
        timings.append({"name": name, "by": by, "cold": cold, "warm": warm})
    session.close()
    return {"open_seconds": opened, "timings": timings}


def child_churn(
    path: str, directory: str, stop: str, seed: int, spacing_s: float
) -> dict[str, Any]:
    """Append and refresh in a loop until the ``stop`` file appears."""
    from queries.copy import AnalyticsCopy

    copy = AnalyticsCopy(f"sqlite:///{path}", Path(directory))
    appended = follow_ups = 0
    refreshes: list[float] = []
    while not Path(stop).exists():
        mix = append_events(Path(path), CHURN_ROWS, seed + len(refreshes), spacing_s)
        appended += mix.total
        follow_ups += mix.total - mix.new
        refreshes.append(copy.refresh().seconds)
    return {"appended": appended, "follow_ups": follow_ups, "refreshes": refreshes}


def child_main(mode: str, kwargs: dict[str, Any]) -> None:
    handlers: dict[str, Callable[..., dict[str, Any]]] = {
        "refresh": child_refresh,
        "reports": child_reports,
        "churn": child_churn,
    }
    data = handlers[mode](**kwargs)
    data["peak_kb"] = own_peak_kb()
    print("RESULT " + json.dumps(data), flush=True)


# --------------------------------------------------------------------------- direct SQLite

# A truthy ``data.revokeGrant`` (not false, 0, "", null or absent), in SQLite.
_SQLITE_TRUTHY = (
    "CASE json_type(e.payload, '$.data.revokeGrant') WHEN 'true' THEN 1 "
    "WHEN 'integer' THEN json_extract(e.payload, '$.data.revokeGrant') != 0 "
    "WHEN 'real' THEN json_extract(e.payload, '$.data.revokeGrant') != 0 "
    "WHEN 'text' THEN json_extract(e.payload, '$.data.revokeGrant') != '' "
    "WHEN 'array' THEN 1 WHEN 'object' THEN 1 ELSE 0 END"
)

# Seconds between two archive timestamps (text), like DuckDB's epoch(a) - epoch(b).
_SECONDS = "(julianday({a}) - julianday({b})) * 86400.0"

# The same to the microsecond (julianday() keeps milliseconds), for archive
# text with six fractional digits: whole seconds, then the microseconds.
_EXACT_SECONDS = (
    "(CAST(strftime('%s', {a}) AS INTEGER) - CAST(strftime('%s', {b}) AS INTEGER) "
    "+ (CAST(substr({a}, 21) AS INTEGER) - CAST(substr({b}, 21) AS INTEGER)) / 1e6)"
)


def _sqlite_asof(intervals: str, points: str, at: str, column: str, until: str) -> str:
    """Each row of ``points`` in the latest of ``intervals`` of its source that starts
    at or before its ``at``, when ``at`` is ``until`` (< or <=) that interval's end_at:
    DuckDB's ASOF JOIN, as a running max over both sorted together.

    Columns: source, start_at (the interval's), ``column`` (the point's).
    """
    return f"""
    SELECT p.source, p.owner AS start_at, p.{column} FROM (
        SELECT *, max(interval_start) OVER (
            PARTITION BY source ORDER BY at, point ROWS UNBOUNDED PRECEDING) AS owner
        FROM (
            SELECT source, start_at AS at, 0 AS point, start_at AS interval_start,
                NULL AS {column}
            FROM {intervals}
            UNION ALL SELECT source, {at}, 1, NULL, {column} FROM {points}
        )
    ) p JOIN {intervals} i ON i.source = p.source AND i.start_at = p.owner
    WHERE p.point = 1 AND p.at {until} i.end_at"""


# Refused attempts in a gap or a span, and rejected frames in a span (up to its end).
_GAP_ATTEMPTS = _sqlite_asof("gaps", "refused", "at", "status", "<")
_SPAN_ATTEMPTS = _sqlite_asof("spans", "refused", "at", "status", "<")
# Requests whose run ended while they waited for their head, in the gap holding their close.
_GAP_WAITS = _sqlite_asof("gaps", "waits", "closed", "run_id", "<")
_SPAN_FRAMES = _sqlite_asof("spans", "rejected_events", "received_at", "id", "<=")
# Webhook-first events in the span or gap (of some length) holding their occurred_at.
_ROW_WEBHOOKS = _sqlite_asof("held", "webhooks", "occurred_at", "id", "<")

# What queries/reports/ingest-coverage.sql says, with default options (every
# source, no window) at :now: each 2xx connection (or a running run's request
# still waiting) covers from its request to its close, capped at now, or up to
# its last sign of life when its run is not running (a request whose run ended
# while it waited for its head covers nothing, is no failed attempt, and is
# named in the gap its close falls in); a connection opens a new
# span unless an earlier one of the source reached its request; gaps lie
# between spans and after the last up to now; events archived by webhook count
# in the span or gap holding their occurred_at. Lists (runs) are JSON arrays
# aggregated from rows sorted first (SQLite 3.40 has no ORDER BY inside an
# aggregate); DuckDB's concat_ws is spelt out.
SQLITE_COVERAGE = f"""
WITH tried AS (
    SELECT c.id, c.run_id, r.source, r.outcome, c.requested_at AS at, c.status_code AS status,
        c.events, c.close_reason, c.closed_at AS closed,
        coalesce(c.status_code IS NULL AND c.first_byte_at IS NULL AND c.close_reason IN (
            'run ended before the response head',
            'run abandoned: closed at its last recorded activity'), 0) AS waited,
        CASE WHEN c.status_code BETWEEN 200 AND 299 THEN 1
            WHEN c.status_code IS NULL AND c.closed_at IS NULL AND r.outcome = 'running' THEN 1
            ELSE 0 END AS covering,
        -- min() of a NULL closed_at is NULL: then now for a running run, else the last sign
        max(c.requested_at, coalesce(min(c.closed_at, :now),
            CASE WHEN r.outcome = 'running' THEN :now END,
            c.last_seen_at, c.first_byte_at, c.requested_at)) AS until
    FROM ingest_connections c JOIN ingest_runs r ON r.id = c.run_id
    WHERE c.requested_at <= :now
),
flagged AS (
    SELECT *, CASE WHEN at <= max(until) OVER (PARTITION BY source ORDER BY at, id
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) THEN 0 ELSE 1 END AS opens
    FROM tried WHERE covering
),
numbered AS (
    SELECT *, sum(opens) OVER (PARTITION BY source ORDER BY at, id ROWS UNBOUNDED PRECEDING)
        AS span_no
    FROM flagged
),
placed AS (
    SELECT *,
        row_number() OVER (PARTITION BY source, span_no ORDER BY at, id) AS nth,
        row_number() OVER (PARTITION BY source, span_no ORDER BY until DESC, id DESC) AS nth_last
    FROM numbered
),
spans AS (
    SELECT source, span_no, min(at) AS start_at, max(until) AS end_at,
        max(CASE WHEN nth = 1 THEN id END) AS first_id,
        max(CASE WHEN nth_last = 1 THEN id END) AS last_id,
        json_group_array(DISTINCT run_id) AS runs, count(*) AS connections, sum(events) AS events
    FROM (SELECT * FROM placed ORDER BY source, span_no, run_id)
    GROUP BY source, span_no
),
gaps AS (
    SELECT source, end_at AS start_at, coalesce(next_start, :now) AS end_at,
        last_id AS ended_by, next_first AS resumed_by
    FROM (
        SELECT s.*, lead(s.start_at) OVER w AS next_start, lead(s.first_id) OVER w AS next_first
        FROM spans s WINDOW w AS (PARTITION BY s.source ORDER BY s.start_at)
    )
    WHERE coalesce(next_start, :now) > end_at
),
refused AS (SELECT source, at, status FROM tried WHERE NOT covering AND NOT waited),
waits AS (SELECT source, closed, run_id FROM tried WHERE waited),
gap_waits AS (
    SELECT source, start_at, group_concat(said, '; ') AS said
    FROM (
        SELECT DISTINCT source, start_at,
            'run ' || run_id || ' ended while its request waited for the response head' AS said
        FROM ({_GAP_WAITS}
        ) ORDER BY source, start_at, said
    ) GROUP BY source, start_at
),
gap_failures AS (
    SELECT source, start_at, sum(n) AS attempts, group_concat(code, ', ') AS codes
    FROM (
        SELECT source, start_at, coalesce(CAST(status AS TEXT), 'no response') AS code,
            count(*) AS n
        FROM ({_GAP_ATTEMPTS}
        ) GROUP BY source, start_at, code ORDER BY source, start_at, code
    ) GROUP BY source, start_at
),
span_failures AS (
    SELECT source, start_at, count(*) AS attempts FROM ({_SPAN_ATTEMPTS}
    ) GROUP BY source, start_at
),
span_frames AS (
    SELECT source, start_at, count(*) AS frames FROM ({_SPAN_FRAMES}
    ) GROUP BY source, start_at
),
held AS (
    SELECT source, start_at, end_at FROM spans WHERE end_at > start_at
    UNION ALL SELECT source, start_at, end_at FROM gaps
),
webhooks AS (SELECT source, occurred_at, id FROM events WHERE channel = 'webhook'),
row_webhooks AS (
    SELECT source, start_at, count(*) AS caught FROM ({_ROW_WEBHOOKS}
    ) GROUP BY source, start_at
),
run_state AS (
    SELECT r.source, max(CASE WHEN r.outcome = 'running' THEN r.id END) AS running_run,
        (SELECT l.id || CASE l.outcome WHEN 'abandoned' THEN ' was abandoned'
                ELSE ' finished (' || l.outcome || ')' END
            FROM ingest_runs l WHERE l.source = r.source AND l.started_at <= :now
            ORDER BY l.started_at DESC LIMIT 1) AS last_run
    FROM ingest_runs r GROUP BY r.source
),
explained AS (
    SELECT g.source, g.start_at, g.end_at, e.run_id AS ended, e.outcome AS how,
        coalesce(e.close_reason, 'no reason recorded') AS why, n.run_id AS resumed,
        -- the running run a gap waits on, when no connection resumed it
        CASE WHEN n.run_id IS NULL THEN o.running_run END AS waiting, o.last_run,
        coalesce(f.attempts, 0) AS failed, f.codes, q.said AS ended_waiting,
        coalesce(w.caught, 0) AS caught
    FROM gaps g
    JOIN tried e ON e.id = g.ended_by
    LEFT JOIN tried n ON n.id = g.resumed_by
    JOIN run_state o ON o.source = g.source
    LEFT JOIN gap_failures f ON f.source = g.source AND f.start_at = g.start_at
    LEFT JOIN gap_waits q ON q.source = g.source AND q.start_at = g.start_at
    LEFT JOIN row_webhooks w ON w.source = g.source AND w.start_at = g.start_at
),
worded AS (
    SELECT *, coalesce(resumed, waiting) AS after,
        CASE WHEN coalesce(resumed, waiting) IS NULL
            THEN 'no ingest running since run ' || last_run
            ELSE 'run ' || ended || CASE
                WHEN resumed IS NULL AND waiting = ended THEN ' reconnecting after: ' || why
                WHEN resumed = ended THEN ' reconnect after: ' || why
                WHEN how = 'abandoned' THEN ' abandoned'
                WHEN how = 'running' THEN ' connection ended: ' || why
                ELSE ' ended (' || how || ')' END
            END AS ending,
        CASE WHEN resumed <> ended THEN 'next run ' || resumed || ' started'
            WHEN waiting <> ended THEN 'run ' || waiting || ' running, not connected'
            END AS resuming,
        CASE WHEN failed = 1 THEN '1 failed attempt (' || codes || ')'
            WHEN failed > 1 THEN failed || ' failed attempts (' || codes || ')' END AS failing
    FROM explained
)
SELECT s.source, 'covered' AS kind, s.start_at, s.end_at,
    {_EXACT_SECONDS.format(a="s.end_at", b="s.start_at")} AS seconds,
    s.runs, s.connections, coalesce(f.attempts, 0) AS failed_attempts, s.events,
    coalesce(j.frames, 0) AS rejected, coalesce(w.caught, 0) AS webhook_events, NULL AS cause
FROM spans s
LEFT JOIN span_failures f ON f.source = s.source AND f.start_at = s.start_at
LEFT JOIN span_frames j ON j.source = s.source AND j.start_at = s.start_at
LEFT JOIN row_webhooks w ON w.source = s.source AND w.start_at = s.start_at
WHERE s.end_at > s.start_at
UNION ALL
SELECT source, 'gap', start_at, end_at, {_EXACT_SECONDS.format(a="end_at", b="start_at")},
    CASE WHEN after IS NULL OR after = ended THEN json_array(ended)
        ELSE json_array(min(ended, after), max(ended, after)) END,
    NULL, failed, NULL, NULL, caught,
    substr(coalesce('; ' || ending, '') || coalesce('; ' || resuming, '')
        || coalesce('; ' || ended_waiting, '') || coalesce('; ' || failing, ''), 3)
FROM worded
ORDER BY 1, 3, 2"""


# The per-grant state and the token kinds that the reports read, built once
# into tables of a scratch SQLite file with the archive attached: what the
# analytics copy holds precomputed (its grants state and tokens view). One
# statement per step and every lookup indexed, so that no step joins two large
# sets by scanning one for each row of the other (``CROSS JOIN`` fixes
# SQLite's loop order where it would otherwise pick that plan).
SQLITE_STATE_BUILD: tuple[str, ...] = (
    # Delegations: the grants whose grant.created names a parentGrantId.
    """
CREATE TABLE edges AS
SELECT grant_id, json_extract(payload, '$.data.parentGrantId') AS parent_grant_id,
    min(occurred_at) AS at
FROM events
WHERE type = 'grant.created' AND grant_id IS NOT NULL
    AND json_extract(payload, '$.data.parentGrantId') IS NOT NULL
GROUP BY grant_id""",
    "CREATE INDEX edges_parent ON edges (parent_grant_id)",
    """
CREATE TABLE bundles AS
SELECT json_extract(payload, '$.data.bundleId') AS bundle_id, grant_id
FROM events WHERE type = 'consent_bundle.created' AND grant_id IS NOT NULL""",
    "CREATE INDEX bundles_bundle ON bundles (bundle_id)",
    """
CREATE TABLE records AS
SELECT json_extract(payload, '$.data.recordId') AS record_id,
    json_extract(payload, '$.data.dataPrincipalId') AS data_principal_id,
    grant_id, occurred_at
FROM events WHERE type = 'dpdp.consent.created' AND grant_id IS NOT NULL""",
    "CREATE INDEX records_record ON records (record_id)",
    "CREATE INDEX records_principal ON records (data_principal_id, occurred_at)",
    # Each grant's revocations by the rules of queries/copy/revocations.py:
    # direct, anomaly, consent bundle, DPDP withdrawal and erasure, then cascade.
    f"""
CREATE TABLE candidates AS
SELECT grant_id, occurred_at AS at, 0 AS rank, id AS event_id,
    coalesce(revoked_by, 'developer_or_principal') AS actor, 'direct' AS via
FROM events WHERE type = 'grant.revoked' AND grant_id IS NOT NULL
UNION ALL
SELECT j.value, e.occurred_at, 1, e.id, 'system', 'anomaly'
FROM events e, json_each(e.payload, '$.data.revokedGrants') j
WHERE e.type = 'anomaly.auto_revoked' AND j.value IS NOT NULL
UNION ALL
SELECT b.grant_id, e.occurred_at, 1, e.id, 'developer', 'consent_bundle'
FROM events e CROSS JOIN bundles b ON b.bundle_id = json_extract(e.payload, '$.data.bundleId')
WHERE e.type = 'consent_bundle.revoked' AND {_SQLITE_TRUTHY}
UNION ALL
SELECT r.grant_id, e.occurred_at, 1, e.id, 'principal', 'consent_withdrawal'
FROM events e CROSS JOIN records r ON r.record_id = json_extract(e.payload, '$.data.recordId')
WHERE e.type = 'dpdp.consent.withdrawn'
    AND json_type(e.payload, '$.data.grantRevoked') = 'true'
UNION ALL
SELECT r.grant_id, e.occurred_at, 1, e.id, 'principal', 'erasure'
FROM events e CROSS JOIN records r
    ON r.data_principal_id = json_extract(e.payload, '$.data.dataPrincipalId')
    AND r.occurred_at <= e.occurred_at
WHERE e.type = 'dpdp.erasure.completed'""",
    "CREATE TABLE blocked AS SELECT grant_id, min(at) AS at FROM candidates GROUP BY grant_id",
    "CREATE INDEX blocked_grant ON blocked (grant_id)",
    # A cascading grant.revoked revokes the grant's delegations, and theirs,
    # except those already revoked before it.
    """
CREATE TABLE walk AS
WITH RECURSIVE roots AS (
    SELECT grant_id AS root, occurred_at AS at, id AS event_id,
        coalesce(revoked_by, 'developer_or_principal') AS actor
    FROM events
    WHERE type = 'grant.revoked' AND grant_id IS NOT NULL
        AND json_type(payload, '$.data.cascade') = 'true'
),
walk(grant_id, at, event_id, actor) AS (
    SELECT e.grant_id, r.at, r.event_id, r.actor
    FROM roots r CROSS JOIN edges e ON e.parent_grant_id = r.root
    LEFT JOIN blocked b ON b.grant_id = e.grant_id
    WHERE b.at IS NULL OR b.at >= r.at
    UNION
    SELECT e.grant_id, w.at, w.event_id, w.actor
    FROM walk w CROSS JOIN edges e ON e.parent_grant_id = w.grant_id
    LEFT JOIN blocked b ON b.grant_id = e.grant_id
    WHERE b.at IS NULL OR b.at >= w.at
)
SELECT * FROM walk""",
    # The first: the least by time, then direct first, then event id.
    """
CREATE TABLE first_revocation AS
SELECT grant_id, at, actor, via FROM (
    SELECT *, row_number() OVER (PARTITION BY grant_id ORDER BY at, rank, event_id) AS n
    FROM (
        SELECT * FROM candidates
        UNION ALL SELECT grant_id, at, 1, event_id, actor, 'cascade' FROM walk
    )
) WHERE n = 1""",
    "CREATE INDEX first_revocation_grant ON first_revocation (grant_id)",
    # The state of the copy's ``grants`` view. ``created`` and ``auto_agent``
    # rely on SQLite's bare columns: with a single min() the other columns come
    # from the row holding it.
    """
CREATE TABLE grants AS
WITH direct AS (
    SELECT grant_id,
        min(agent_id) AS any_agent_id,
        min(CASE WHEN type IN ('grant.created', 'consent_bundle.created')
            THEN occurred_at END) AS created_at,
        count(CASE WHEN type = 'token.issued' THEN 1 END) AS tokens_issued,
        min(CASE WHEN type = 'budget.exhausted'
            OR (type = 'budget.threshold' AND percentage >= 50) THEN occurred_at END)
            AS budget_50_at,
        min(CASE WHEN type = 'budget.exhausted'
            OR (type = 'budget.threshold' AND percentage >= 80) THEN occurred_at END)
            AS budget_80_at,
        min(CASE WHEN type = 'budget.exhausted' THEN occurred_at END) AS exhausted_at,
        count(CASE WHEN type IN ('budget.threshold', 'budget.exhausted') THEN 1 END) > 0
            AS budgeted
    FROM events WHERE grant_id IS NOT NULL
    GROUP BY grant_id
),
created AS (
    SELECT grant_id, min(occurred_at) AS at, agent_id
    FROM events
    WHERE type IN ('grant.created', 'consent_bundle.created')
        AND grant_id IS NOT NULL AND agent_id IS NOT NULL
    GROUP BY grant_id
),
listed AS (
    SELECT j.value AS grant_id, e.occurred_at,
        json_extract(e.payload, '$.data.agentId') AS agent_id
    FROM events e, json_each(e.payload, '$.data.revokedGrants') j
    WHERE e.type = 'anomaly.auto_revoked' AND j.value IS NOT NULL
),
auto AS (SELECT grant_id, min(occurred_at) AS at FROM listed GROUP BY grant_id),
auto_agent AS (
    SELECT grant_id, min(occurred_at) AS at, agent_id
    FROM listed WHERE agent_id IS NOT NULL GROUP BY grant_id
),
state AS (
    SELECT d.grant_id,
        coalesce(c.agent_id, d.any_agent_id, aa.agent_id) AS agent_id,
        d.created_at,
        d.tokens_issued,
        f.at AS revoked_at, f.actor AS revoked_by, f.via AS revoked_via,
        d.budget_50_at, d.budget_80_at, d.exhausted_at, d.budgeted
    FROM direct d
    LEFT JOIN created c ON c.grant_id = d.grant_id
    LEFT JOIN first_revocation f ON f.grant_id = d.grant_id
    LEFT JOIN auto_agent aa ON aa.grant_id = d.grant_id
    UNION ALL
    -- grants known only from an anomaly.auto_revoked list
    SELECT a.grant_id, aa.agent_id, NULL, 0, f.at, f.actor, f.via, NULL, NULL, NULL, 0
    FROM auto a LEFT JOIN auto_agent aa ON aa.grant_id = a.grant_id
    JOIN first_revocation f ON f.grant_id = a.grant_id
    WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.grant_id = a.grant_id)
)
SELECT s.*, s.grant_id IN (SELECT grant_id FROM edges) AS delegated FROM state s""",
    "CREATE UNIQUE INDEX grants_grant_id ON grants (grant_id)",
    # Each token.issued with its agent (else its grant's) and its kind, by the
    # rule in queries.token_kinds, the lag read from the ULIDs by its
    # ``token_lag_ms`` (registered with the connection: several times faster
    # than the same arithmetic in SQLite's substr/instr).
    f"""
CREATE TABLE tokens AS
WITH issued AS (
    SELECT agent_id, grant_id, method, token_lag_ms(token_id, grant_id) AS lag
    FROM events WHERE type = 'token.issued'
)
SELECT coalesce(i.agent_id, g.agent_id) AS agent_id,
    CASE WHEN i.method IN ('exchange', 'delegation', 'refresh') THEN i.method
        WHEN i.lag IS NULL OR i.lag < -{INITIAL_WINDOW_MS} THEN 'unknown'
        WHEN i.lag <= {INITIAL_WINDOW_MS} THEN CASE WHEN g.delegated
            THEN 'delegation' ELSE 'exchange' END
        ELSE 'refresh' END AS kind
FROM issued i LEFT JOIN grants g ON g.grant_id = i.grant_id""",
)

# Each report with default options (no window, no filters, the default --by),
# reading the state tables above and the attached archive.
SQLITE_REPORTS: dict[str, str] = {
    "revocations-by-actor": """
WITH counted AS (
    SELECT revoked_by AS actor, revoked_via AS via, count(*) AS revocations
    FROM grants WHERE revoked_at IS NOT NULL GROUP BY revoked_by, revoked_via
)
SELECT actor, via, revocations, revocations * 1.0 / sum(revocations) OVER () AS share
FROM counted
ORDER BY revocations DESC, actor, via""",
    "budget-exhaustion-rate": f"""
WITH g AS (
    SELECT budget_50_at IS NOT NULL AS r50, budget_80_at IS NOT NULL AS r80,
        exhausted_at IS NOT NULL AS ex, created_at, exhausted_at
    FROM grants WHERE budgeted
),
exh AS (
    SELECT {_SECONDS.format(a="exhausted_at", b="created_at")} AS s
    FROM g WHERE ex AND created_at IS NOT NULL
),
ranked AS (SELECT s, row_number() OVER (ORDER BY s) AS rn, count(*) OVER () AS n FROM exh)
SELECT count(*) AS grants,
    count(CASE WHEN r50 THEN 1 END) AS reached_50,
    count(CASE WHEN r80 THEN 1 END) AS reached_80,
    count(CASE WHEN ex THEN 1 END) AS exhausted,
    count(CASE WHEN ex THEN 1 END) * 1.0 / count(*) AS exhaustion_rate,
    (SELECT avg(s) FROM ranked WHERE rn IN ((n + 1) / 2, (n + 2) / 2))
        AS median_seconds_to_exhaustion
FROM g""",
    "event-volume": """
SELECT date(occurred_at) AS period, type, count(*) AS events
FROM events
GROUP BY period, type
ORDER BY period, events DESC, type""",
    "grant-lifetime": f"""
WITH r AS (
    SELECT revoked_by AS actor, revoked_via AS via,
        {_SECONDS.format(a="revoked_at", b="created_at")} AS seconds
    FROM grants WHERE revoked_at IS NOT NULL
),
pairs AS (
    SELECT 0 AS all_row, actor, via, seconds FROM r
    UNION ALL SELECT 1, 'all', 'all', seconds FROM r
),
ranked AS (
    SELECT all_row, actor, via, seconds,
        row_number() OVER w AS rn,
        0.5 * (count(*) OVER p - 1) AS pos50,
        0.9 * (count(*) OVER p - 1) AS pos90
    FROM pairs WHERE seconds IS NOT NULL
    WINDOW p AS (PARTITION BY all_row, actor, via),
        w AS (PARTITION BY all_row, actor, via ORDER BY seconds)
),
q AS (
    SELECT all_row, actor, via,
        max(CASE WHEN rn = CAST(pos50 AS INTEGER) + 1 THEN seconds END) AS lo50,
        max(CASE WHEN rn = CAST(pos50 AS INTEGER) + 2 THEN seconds END) AS hi50,
        max(pos50 - CAST(pos50 AS INTEGER)) AS f50,
        max(CASE WHEN rn = CAST(pos90 AS INTEGER) + 1 THEN seconds END) AS lo90,
        max(CASE WHEN rn = CAST(pos90 AS INTEGER) + 2 THEN seconds END) AS hi90,
        max(pos90 - CAST(pos90 AS INTEGER)) AS f90
    FROM ranked GROUP BY all_row, actor, via
),
counts AS (
    SELECT all_row, actor, via, count(seconds) AS grants,
        count(*) - count(seconds) AS without_created
    FROM pairs GROUP BY all_row, actor, via
)
SELECT c.actor, c.via, c.grants,
    q.lo50 + q.f50 * (coalesce(q.hi50, q.lo50) - q.lo50) AS median_seconds,
    q.lo90 + q.f90 * (coalesce(q.hi90, q.lo90) - q.lo90) AS p90_seconds,
    c.without_created
FROM counts c LEFT JOIN q ON q.all_row = c.all_row AND q.actor = c.actor AND q.via = c.via
ORDER BY c.all_row DESC, c.grants DESC, c.actor, c.via""",
    "ingest-coverage": SQLITE_COVERAGE,
    "token-issuance": """
SELECT agent_id,
    count(*) AS tokens,
    count(CASE WHEN kind = 'exchange' THEN 1 END) AS exchange,
    count(CASE WHEN kind = 'delegation' THEN 1 END) AS delegation,
    count(CASE WHEN kind = 'refresh' THEN 1 END) AS refresh,
    count(CASE WHEN kind = 'unknown' THEN 1 END) AS unknown,
    CASE WHEN count(CASE WHEN kind <> 'unknown' THEN 1 END) > 0
        THEN count(CASE WHEN kind = 'refresh' THEN 1 END) * 1.0
            / count(CASE WHEN kind <> 'unknown' THEN 1 END)
    END AS refresh_ratio
FROM tokens
GROUP BY agent_id
ORDER BY tokens DESC, agent_id NULLS LAST""",
    "top-agents": """
SELECT rank() OVER (ORDER BY count(*) DESC) AS rank,
    agent_id,
    count(*) AS grants,
    count(revoked_at) AS revoked,
    count(revoked_at) * 1.0 / count(*) AS revocation_rate,
    count(exhausted_at) AS exhausted,
    count(exhausted_at) * 1.0 / count(*) AS exhaustion_rate,
    sum(tokens_issued) AS tokens
FROM grants
GROUP BY agent_id
ORDER BY grants DESC, revocation_rate DESC, agent_id NULLS LAST""",
}

# Reports whose SQLite result must equal DuckDB's (the run fails otherwise): all,
# since equal rows are what show that the SQLite side does the same work.
MUST_MATCH = tuple(SQLITE_REPORTS)


class SqliteTimeout(Exception):
    pass


def sqlite_query(
    conn: sqlite3.Connection, sql: str, timeout: float, params: dict[str, Any]
) -> tuple[float, list[Row]]:
    """Seconds and rows for ``sql``; SqliteTimeout once ``timeout`` seconds have passed."""
    started = time.perf_counter()
    deadline = started + timeout
    conn.set_progress_handler(lambda: int(time.perf_counter() > deadline), 100_000)
    try:
        rows = conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "interrupt" in str(exc):
            raise SqliteTimeout from None
        raise
    finally:
        conn.set_progress_handler(None, 0)
    return time.perf_counter() - started, rows


def normal_value(value: Any) -> Any:
    """A value as both engines can show it: timestamps as archive text, dates as ISO,
    lists as compact JSON (SQLite's json_array)."""
    if isinstance(value, list):
        return json.dumps([normal_value(x) for x in value], separators=(",", ":"))
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime(TIME_FORMAT)
    if isinstance(value, date):
        return value.isoformat()
    return value


def same_value(a: Any, b: Any) -> bool:
    a, b = normal_value(a), normal_value(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-3)
    return bool(a == b)


def first_mismatch(duck: Sequence[Row], lite: Sequence[Row]) -> str | None:
    if len(duck) != len(lite):
        return f"{len(duck)} rows in DuckDB, {len(lite)} in SQLite"
    for i, (a, b) in enumerate(zip(duck, lite, strict=True)):
        if len(a) != len(b) or not all(same_value(x, y) for x, y in zip(a, b, strict=True)):
            return f"row {i}: DuckDB {a!r} vs SQLite {b!r}"
    return None


@dataclass
class SqliteResult:
    name: str
    cold: float | None  # None: timed out
    warm: list[float] = field(default_factory=list)
    mismatch: str | None = None
    timeout: float = 0.0

    @property
    def median(self) -> float | None:
        return statistics.median(self.warm) if self.warm else None


@dataclass
class SqliteRun:
    build_seconds: float
    results: list[SqliteResult]


def duckdb_rows(db_url: str, directory: Path, now: datetime) -> dict[str, list[Row]]:
    """Each report's default result from DuckDB at ``now``, to compare with SQLite's."""
    from queries.api import prepare_report
    from queries.copy import AnalyticsCopy
    from queries.reports import load_reports
    from queries.session import Session

    session = Session(AnalyticsCopy(db_url, directory))
    out = {}
    for name in load_reports():
        out[name] = session.conn.execute(*prepare_report(name, now=now)).fetchall()
    session.close()
    return out


def open_state(path: Path, archive: Archive, mode: str) -> sqlite3.Connection:
    """The state file (``mode`` rwc or ro) with the archive attached read-only as ``archive``."""
    conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True)
    conn.execute("ATTACH DATABASE ? AS archive", (f"file:{archive.path}?mode=ro",))
    return conn


def build_sqlite_state(archive: Archive) -> tuple[Path, float]:
    """Build ``SQLITE_STATE_BUILD`` into a fresh scratch file; its path and seconds."""
    path = WORK / f"sqlite-state-{archive.path.stem}.db"
    for stale in (path, *(Path(f"{path}{s}") for s in ("-journal", "-wal", "-shm"))):
        stale.unlink(missing_ok=True)
    started = time.perf_counter()
    conn = open_state(path, archive, "rwc")
    # A scratch file rebuilt from the archive at will: no journal, no fsync.
    conn.execute("PRAGMA main.journal_mode=OFF")
    conn.execute("PRAGMA main.synchronous=OFF")
    conn.create_function("token_lag_ms", 2, token_lag_ms, deterministic=True)
    for statement in SQLITE_STATE_BUILD:
        conn.execute(statement)
    conn.commit()
    conn.close()
    return path, time.perf_counter() - started


def run_sqlite(
    archive: Archive, directory: Path, now: datetime, runs: int, timeout: float
) -> SqliteRun:
    """Build the state once, then each report once cold and ``runs`` times warm at ``now``."""
    expected = duckdb_rows(archive.url, directory, now)
    params = {"now": now.strftime(TIME_FORMAT)}
    path, build_seconds = build_sqlite_state(archive)
    print(f"  state build {build_seconds:.2f} s", flush=True)
    conn = open_state(path, archive, "ro")
    results = []
    for name, sql in SQLITE_REPORTS.items():
        try:
            cold, rows = sqlite_query(conn, sql, timeout, params)
            warm = [sqlite_query(conn, sql, timeout, params)[0] for _ in range(runs)]
        except SqliteTimeout:
            print(f"  {name}: SQLite > {timeout:.0f} s (timed out)", flush=True)
            results.append(SqliteResult(name, None, timeout=timeout))
            continue
        mismatch = first_mismatch(expected[name], rows)
        result = SqliteResult(name, cold, warm, mismatch)
        results.append(result)
        state = "same result" if mismatch is None else f"DIFFERENT: {mismatch}"
        print(
            f"  {name}: SQLite cold {cold:.3f} s, warm {result.median:.3f} s, {state}", flush=True
        )
    conn.close()
    path.unlink(missing_ok=True)
    return SqliteRun(build_seconds, results)


# --------------------------------------------------------------------------- concurrency


@dataclass
class CliRun:
    name: str
    refresh: bool
    seconds: float
    rss_mb: float
    failure: str | None


def run_cli(archive: Archive, directory: Path, name: str, refresh: bool) -> CliRun:
    args = [
        sys.executable,
        "-m",
        "ingest.cli",
        "report",
        name,
        "--format",
        "csv",
        "--db",
        archive.url,
        "--analytics-dir",
        str(directory),
    ]
    if not refresh:
        args.append("--no-refresh")
    run = run_measured(args)
    failure = None
    if run.returncode != 0 or "lock" in run.stderr.lower() or "Error" in run.stderr:
        failure = f"exit {run.returncode}: {run.stderr.strip()[-500:]}"
    elif not run.stdout.strip():
        failure = "empty output"
    return CliRun(name, refresh, run.seconds, run.rss_mb, failure)


@dataclass
class Concurrency:
    idle: list[CliRun]
    busy: list[CliRun]
    churn: ChildRun


def run_concurrency(archive: Archive, directory: Path, per_report: int, seed: int) -> Concurrency:
    from queries.reports import load_reports

    names = list(load_reports())
    idle = [run_cli(archive, directory, name, refresh=False) for name in names]
    stop = WORK / "churn.stop"
    stop.unlink(missing_ok=True)
    churn = start_child(
        "churn",
        path=str(archive.path),
        directory=str(directory),
        stop=str(stop),
        seed=seed,
        spacing_s=archive.spacing_s,
    )
    busy: list[CliRun] = []
    try:
        for i in range(per_report):
            for name in names:
                # Every third run refreshes first, as `report` does by default.
                run = run_cli(archive, directory, name, refresh=i % 3 == 2)
                busy.append(run)
                if run.failure:
                    print(f"  FAILED {name}: {run.failure}", flush=True)
    finally:
        stop.touch()
    result = finish_child(*churn)
    stop.unlink(missing_ok=True)
    return Concurrency(idle, busy, result)


# --------------------------------------------------------------------------- measure


@dataclass
class Timing:
    name: str
    by: str | None
    cold: float
    warm: list[float]
    sqlite: SqliteResult | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.warm)

    @property
    def speedup(self) -> float | None:
        """SQLite's warm median / DuckDB's; for a timeout, the lower bound timeout / DuckDB."""
        if self.sqlite is None:
            return None
        return (self.sqlite.median or self.sqlite.timeout) / self.median


@dataclass
class Results:
    archive: Archive
    archive_bytes: int
    mix: AppendMix
    full: ChildRun
    incremental: ChildRun
    noop: ChildRun
    reports: ChildRun
    timings: list[Timing]
    sqlite_build: float
    concurrency: Concurrency

    def peak_rss(self) -> list[tuple[str, float]]:
        cc = self.concurrency
        return [
            ("full refresh", self.full.rss_mb),
            ("incremental refresh", self.incremental.rss_mb),
            ("refresh, nothing new", self.noop.rss_mb),
            ("reports session", self.reports.rss_mb),
            ("append+refresh loop", cc.churn.rss_mb),
            ("CLI report (max)", max(r.rss_mb for r in cc.idle + cc.busy)),
        ]


def measure(args: argparse.Namespace, archive: Archive) -> Results:
    directory = WORK / "analytics"
    shutil.rmtree(directory, ignore_errors=True)
    size = archive_bytes(archive.path)
    print("full refresh (child process)...", flush=True)
    full = run_child("refresh", db_url=archive.url, directory=str(directory), full=True)
    print(f"  {full.data['seconds']:.1f} s, peak RSS {full.rss_mb:.0f} MB", flush=True)

    print(f"appending {APPEND_ROWS:,} events...", flush=True)
    mix = append_events(archive.path, APPEND_ROWS, args.seed + 1000, archive.spacing_s)
    print(f"  {mix.total:,}: {describe_mix(mix)}", flush=True)
    incremental = run_child("refresh", db_url=archive.url, directory=str(directory), full=False)
    print(f"  incremental refresh {incremental.data['seconds']:.2f} s", flush=True)
    if incremental.data.get("phases"):
        phases = ", ".join(f"{k} {v:.2f}" for k, v in incremental.data["phases"].items())
        print(f"  phases (s): {phases}", flush=True)
    noop = run_child("refresh", db_url=archive.url, directory=str(directory), full=False)
    print(f"  refresh with nothing new {noop.data['seconds']:.2f} s", flush=True)

    # One "now" for both engines (ingest-coverage's last gap runs up to it).
    now = datetime.now(timezone.utc)
    print("reports (child process, one session)...", flush=True)
    reports = run_child(
        "reports",
        db_url=archive.url,
        directory=str(directory),
        runs=args.runs,
        now=now.isoformat(),
    )
    timings = [Timing(t["name"], t["by"], t["cold"], t["warm"]) for t in reports.data["timings"]]
    for t in timings:
        print(f"  {variant(t)}: cold {t.cold:.3f} s, warm {t.median:.3f} s", flush=True)

    print("the same reports in SQLite, over state built in advance...", flush=True)
    by_name = {t.name: t for t in timings if t.by is None}
    sqlite = run_sqlite(archive, directory, now, args.runs, args.sqlite_timeout)
    for result in sqlite.results:
        by_name[result.name].sqlite = result

    print("reports through the CLI while another process refreshes...", flush=True)
    concurrency = run_concurrency(archive, directory, args.concurrent_runs, args.seed + 2000)
    return Results(
        archive,
        size,
        mix,
        full,
        incremental,
        noop,
        reports,
        timings,
        sqlite.build_seconds,
        concurrency,
    )


# --------------------------------------------------------------------------- render


def mark(met: bool) -> str:
    return "met" if met else "**not met**"


def mb(value: float) -> str:
    return f"{value:,.0f} MB"


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def secs(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def times(value: float) -> str:
    return f"{value:.1f}x" if value < 100 else f"{value:,.0f}x"


def render_refreshes(r: Results) -> list[str]:
    churn = r.concurrency.churn.data["refreshes"] or [0.0]
    full_s, incr_s = r.full.data["seconds"], r.incremental.data["seconds"]
    full_target = FULL_TARGET_S * r.archive.events / FULL_TARGET_EVENTS
    phases = [
        f"{label}: " + ", ".join(f"{k} {v:.2f}" for k, v in run.data["phases"].items())
        for label, run in (("full", r.full), ("incremental", r.incremental))
        if run.data.get("phases")
    ]
    notes = ["", "Refresh phases (s) — " + "; ".join(phases) + "."] if phases else []
    churn_data = r.concurrency.churn.data
    notes += [
        "",
        f"The {r.mix.total:,} events appended for the incremental refresh: "
        f"{describe_mix(r.mix)}. The loop appends the "
        f"same mix ({churn_data.get('follow_ups', 0):,} of its {churn_data['appended']:,} "
        "events were follow-ups).",
    ]
    return [
        "| refresh | events copied | seconds | events/s | process wall s | peak RSS | target |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| full, into a fresh copy | {r.full.data['new_rows']:,} | {full_s:.1f} | "
        f"{r.full.data['new_rows'] / full_s:,.0f} | {r.full.wall:.1f} | {mb(r.full.rss_mb)} | "
        f"≤ {full_target:.1f} s: {mark(full_s <= full_target)} |",
        f"| incremental, +{APPEND_ROWS:,} | {r.incremental.data['new_rows']:,} | {incr_s:.2f} | "
        f"{r.incremental.data['new_rows'] / incr_s:,.0f} | {r.incremental.wall:.1f} | "
        f"{mb(r.incremental.rss_mb)} | ≤ {INCREMENTAL_TARGET_S:.0f} s: "
        f"{mark(incr_s <= INCREMENTAL_TARGET_S)} |",
        f"| nothing new | 0 | {r.noop.data['seconds']:.2f} | - | {r.noop.wall:.1f} | "
        f"{mb(r.noop.rss_mb)} | |",
        f"| loop: +{CHURN_ROWS:,}, under report load (median of {len(churn)}) | "
        f"{CHURN_ROWS:,} | {statistics.median(churn):.2f} | "
        f"{CHURN_ROWS / statistics.median(churn):,.0f} | - | {mb(r.concurrency.churn.rss_mb)} | |",
        *notes,
    ]


def spread(values: Sequence[float]) -> str:
    """Median, then fastest to slowest."""
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def render_reports(r: Results) -> list[str]:
    lines = [
        "| report | --by | DuckDB cold s | DuckDB warm median s (fastest-slowest) | SQLite cold s "
        "| SQLite warm median s (fastest-slowest) | speedup | same result | target |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for t in r.timings:
        by = t.by or "(default)"
        lite_cold, lite_warm, speed, same = "-", "-", "-", "-"
        met = t.median <= WARM_TARGET_S
        if t.sqlite is not None:
            s = t.sqlite
            speed = times(t.speedup or 0.0)
            if s.cold is None:
                lite_cold = f"> {s.timeout:.0f} (timeout)"
                speed = f"> {speed}"
            else:
                lite_cold = secs(s.cold)
                lite_warm = spread(s.warm)
                same = "yes" if s.mismatch is None else "**no**"
            met = met and (t.speedup or 0) >= SPEEDUP_TARGET
        lines.append(
            f"| {t.name} | {by} | {t.cold:.3f} | {spread(t.warm)} | {lite_cold} | {lite_warm} | "
            f"{speed} | {same} | {mark(met)} |"
        )
    return lines


# Cron refreshes of the copy in a day, one every five minutes.
REFRESHES_PER_DAY = 86400 // CRON_SECONDS


def render_building(r: Results) -> list[str]:
    """The reports with SQLite equivalents, all run once: warm, with each side's build,
    and with DuckDB's builds spread over a day of cron refreshes."""
    compared = [t for t in r.timings if t.sqlite is not None and t.sqlite.median is not None]
    if not compared:
        return ["No SQLite report finished within its timeout."]
    duck = sum(t.median for t in compared)
    lite = sum(t.sqlite.median or 0.0 for t in compared if t.sqlite is not None)
    full_s, incr_s = r.full.data["seconds"], r.incremental.data["seconds"]
    day = (full_s + REFRESHES_PER_DAY * incr_s) / REFRESHES_PER_DAY
    reports = f"the {len(compared)} reports' warm medians"
    rows = [
        (
            "state built in advance, builds not counted",
            duck,
            lite,
            f"both: {reports} only",
        ),
        (
            "each side building its state",
            full_s + duck,
            r.sqlite_build + lite,
            f"DuckDB: the full refresh of the copy ({full_s:.1f} s); SQLite: its state build "
            f"({r.sqlite_build:.1f} s); both then {reports}",
        ),
        (
            "per refresh over a day of cron refreshes every five minutes",
            day + duck,
            r.sqlite_build + lite,
            f"DuckDB: (full refresh + {REFRESHES_PER_DAY} incremental refreshes of "
            f"{APPEND_ROWS:,} events, {incr_s:.2f} s each) / {REFRESHES_PER_DAY} = {day:.2f} s; "
            f"SQLite: its state build at every refresh; both then {reports}",
        ),
    ]
    timed_out = [t.name for t in r.timings if t.sqlite is not None and t.sqlite.median is None]
    notes = ["", f"Left out (SQLite timed out): {', '.join(timed_out)}."] if timed_out else []
    lines = [
        "| comparison | DuckDB s | SQLite s | SQLite / DuckDB | included |",
        "|---|---:|---:|---:|---|",
    ]
    lines += [
        f"| {label} | {secs(d)} | {secs(q)} | {times(q / d)} | {what} |"
        for label, d, q, what in rows
    ]
    return lines + notes


def render_concurrency(r: Results) -> list[str]:
    c = r.concurrency
    groups = [
        ("CLI `report --no-refresh`, idle", c.idle),
        ("CLI `report --no-refresh`, while refreshing", [x for x in c.busy if not x.refresh]),
        ("CLI `report` (refreshes first), while refreshing", [x for x in c.busy if x.refresh]),
    ]
    lines = [
        "| measure | runs | median s | max s | failures | peak RSS |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, runs in groups:
        if not runs:
            continue
        secs = [x.seconds for x in runs]
        failures = sum(1 for x in runs if x.failure)
        lines.append(
            f"| {label} | {len(runs)} | {statistics.median(secs):.2f} | {max(secs):.2f} | "
            f"{failures} | {mb(max(x.rss_mb for x in runs))} |"
        )
    appended = c.churn.data["appended"]
    lines += [
        "",
        f"Meanwhile the refresher loop appended {appended:,} events in "
        f"{len(c.churn.data['refreshes'])} refreshes.",
    ]
    return lines


def variant(t: Timing) -> str:
    return f"{t.name} --by {t.by}" if t.by else t.name


def render_targets(r: Results) -> list[str]:
    worst = max(r.timings, key=lambda t: t.median)
    slow = [variant(t) for t in r.timings if t.median > WARM_TARGET_S]
    compared = [t for t in r.timings if t.speedup is not None]
    least = min(compared, key=lambda t: t.speedup or 0.0)
    below = [t.name for t in compared if (t.speedup or 0.0) < SPEEDUP_TARGET]
    full_s, incr_s = r.full.data["seconds"], r.incremental.data["seconds"]
    full_target = FULL_TARGET_S * r.archive.events / FULL_TARGET_EVENTS
    rss_name, rss = max(r.peak_rss(), key=lambda x: x[1])
    failures = sum(1 for x in r.concurrency.busy if x.failure)
    rows = [
        (
            f"every report ≤ {WARM_TARGET_S} s warm",
            f"slowest {worst.median:.3f} s ({variant(worst)})"
            + (f"; over: {', '.join(slow)}" if slow else ""),
            not slow,
        ),
        (
            f"every report ≥ {SPEEDUP_TARGET:.0f}x faster than SQLite over its prebuilt state",
            f"lowest {times(least.speedup or 0.0)} ({least.name})"
            + (f"; under: {', '.join(below)}" if below else ""),
            not below,
        ),
        (
            f"incremental refresh of {APPEND_ROWS:,} ≤ {INCREMENTAL_TARGET_S:.0f} s",
            f"{incr_s:.2f} s",
            incr_s <= INCREMENTAL_TARGET_S,
        ),
        (
            f"full refresh of {r.archive.events:,} ≤ {full_target:.1f} s",
            f"{full_s:.1f} s",
            full_s <= full_target,
        ),
        (f"peak RSS ≤ {RSS_TARGET_MB:.0f} MB", f"{rss:.0f} MB ({rss_name})", rss <= RSS_TARGET_MB),
        ("zero failures under concurrent refresh", f"{failures}", failures == 0),
    ]
    lines = ["| target | result | |", "|---|---|---|"]
    lines += [f"| {label} | {result} | {mark(met)} |" for label, result, met in rows]
    return lines


def render(r: Results, args: argparse.Namespace) -> str:
    copy = r.full.data["copy_bytes"]
    rss = ", ".join(f"{name} {value:.0f}" for name, value in r.peak_rss())
    command = f"python -m benchmarks.analytics --events {args.events}"
    segments = plural(r.full.data["segments"], "segment")
    lines = [
        facts_line(command, ("sqlite", "duckdb")),
        "",
        f"Archive: {r.archive.events:,} events over {SPAN_DAYS} days "
        f"({r.full.data['grants']:,} grants), SQLite file {r.archive_bytes / 2**20:,.0f} MB; "
        f"analytics copy {copy / 2**20:,.0f} MB "
        f"({copy / r.archive_bytes:.0%} of the archive, {segments}).",
        "",
        *render_refreshes(r),
        "",
        f"Reports over {r.incremental.data['events']:,} events, each engine over its state "
        f"built in advance: DuckDB in one session (opened in "
        f"{r.reports.data['open_seconds']:.3f} s), SQLite over its state tables (built in "
        f"{r.sqlite_build:.2f} s); each report once cold, then {args.runs} warm runs, at the "
        "same now; speedup = SQLite's warm median / DuckDB's.",
        "",
        *render_reports(r),
        "",
        *render_building(r),
        "",
        *render_concurrency(r),
        "",
        f"Peak RSS (MB): {rss}.",
        "",
        *render_targets(r),
    ]
    return "\n".join(lines)


METHOD = """## Analytics

Command: `make bench-analytics` (= `python -m benchmarks.analytics --events 10000000`);
`make bench-analytics-quick` runs 200,000 events without writing this file.

Method, all in one run on the same machine: an archive of N simulator events
(mixed envelope, spread over 90 days) is built once with plain `sqlite3`
inserts and cached in `benchmarks/.work/`; its `ingest_runs` are those of a
cron worker every five minutes (one run per five-minute window, one window in
500 missed, one rejected frame in every fifth run), and its
`ingest_connections` one 200 stream per run, from just after its start to its
end, with one failed attempt before it in every seventh run (503) and every
eleventh (no answer), and a reconnect half-way in every thirteenth. A child
process builds a fresh analytics copy (full refresh); 100,000 later events are
appended (with their runs) and another child refreshes incrementally, and a
third refreshes with nothing new. Half of the appended events come from a new
simulator seed (new grants only); the other half are follow-ups for existing
grants sampled across the archive's whole seq range (skipping grants already
revoked), in each grant's own envelope: `token.issued` (live with `agentId`
and a token id made at the event's time, so a refresh by its ULID; documented
without it, method exchange or refresh), `budget.threshold` (50/80) and
`budget.exhausted` for budget grants, `grant.revoked` (live without
`revokedBy`, documented with `revokedBy` developer/principal) and
`anomaly.auto_revoked` listing 1-3 of an agent's live grants, so the merged
grants overlap the whole grants table.

Reports, both engines over state built in advance, at one "now", the same
number of runs: a child process opens one DuckDB `Session` and runs each
named report once cold, then five times warm, with default options and with
`--by agent` / `--by month` where the report takes them; a run ends with the
whole result fetched as an Arrow table. SQLite has no analytics copy, so the
benchmark builds what the copy holds precomputed, once, into tables of a
scratch SQLite file with the archive attached read-only
(`SQLITE_STATE_BUILD`, timed as one number, the SQLite state build): each
grant's state (agent, creation, tokens issued, budget levels, its first
revocation by the rules of the copy: direct, anomaly, consent bundle, DPDP
withdrawal and erasure, cascade), whether it had budget activity and whether
it is delegated, and each `token.issued` with its agent and kind (its lag
read from the ULIDs by `queries.token_kinds.token_lag_ms`, registered as a
SQLite function). The build is a sequence of tables, every lookup in it
indexed. The same reports written by hand for SQLite read those tables and
the archive's own tables (event-volume and ingest-coverage need no grant
state; coverage spans are merged with window functions) in one connection
opened after the build: each once cold, then five times warm, all rows
fetched as tuples, each under a 300 s timeout (shown as such). Warm
latencies are the median, with the fastest and slowest run; speedup =
SQLite's warm median / DuckDB's, so neither side's build is in it. The rows
of each report are compared with DuckDB's; at up to 1,000,000 events a
difference in any of them fails the run.

Then, over the reports with a SQLite equivalent (default options), each run
once, three totals: (1) state built in advance: the sum of the warm medians
on each side, builds not counted; (2) each side building its state: DuckDB's
full refresh of the copy plus its sum, against the SQLite state build plus
its sum (the full refresh copies the N events, the SQLite build reads the
archive after the append, N + 100,000); (3) per refresh over a day of cron
refreshes every five minutes: DuckDB's full refresh plus 288 incremental
refreshes of the measured time (100,000 events each), divided by 288, plus
its sum, against the SQLite state build plus its sum, since SQLite has no
incremental form of its state and rebuilds it at each refresh. All three use
only figures measured in the same run.

Finally a child process loops appending 20,000 events (same mix) and
refreshing, while the real CLI (`report NAME --format csv`, with and without
`--no-refresh`) runs every report; a non-zero exit, empty output or
`lock`/`Error` on stderr is a failure. Peak RSS is each process's own
`VmHWM`. The first line of the results is read from the machine
(`benchmarks.machine.facts_line`)."""


def check_matches(timings: list[Timing]) -> None:
    """The reports that must agree with SQLite; raise after printing what differs."""
    for t in timings:
        if t.name in MUST_MATCH and t.sqlite is not None and t.sqlite.mismatch is not None:
            print(f"MISMATCH in {t.name}: {t.sqlite.mismatch}", flush=True)
            raise AssertionError(f"{t.name}: SQLite and DuckDB disagree")


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", type=int, default=5, help="warm runs per report")
    parser.add_argument(
        "--sqlite-timeout", type=float, default=300.0, help="seconds per SQLite query"
    )
    parser.add_argument(
        "--concurrent-runs",
        type=int,
        default=3,
        help="CLI runs per report while refreshing (every third refreshes first)",
    )
    parser.add_argument("--rebuild-archive", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    return parser.parse_args()


def main() -> None:
    if sys.argv[1:2] == [CHILD]:
        child_main(sys.argv[2], json.loads(sys.argv[3]))
        return
    args = parse_args()
    archive = ensure_archive(args.events, args.seed, args.rebuild_archive)
    reset_archive(archive)
    try:
        results = measure(args, archive)
    finally:
        reset_archive(archive)
    table = render(results, args)
    print()
    print(table)
    if args.events <= 1_000_000:
        check_matches(results.timings)
    if not args.no_write:
        write_section("analytics", table, METHOD)


if __name__ == "__main__":
    main()
