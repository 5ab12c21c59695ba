"""Ingest benchmark: a backlog streamed over loopback into fresh archives, against ceilings.

Run with ``make bench`` (1M events, plus a 4M run for the memory check) or
``python -m benchmarks.ingest --help``. In one run, on the same events, it measures:

- **end-to-end**: the real ``grantex-archive ingest`` process replaying the
  simulator's backlog (``--since`` its start, ``--max-events N``) into a fresh
  SQLite file (with sealing, and without it through ``benchmarks/unsealed.py``)
  and into a fresh PostgreSQL schema; wall time of the process, start-up
  included, its CPU time (its reader process's included) and peak RSS (the
  ingest process's plus its reader process's);
- **the SQLite ceiling**: the fastest plain-``sqlite3`` way known to store the
  same rows: prepared in advance as the product binds them (text times, ``''``
  and NaN for NULL turned back by ``NULLIF`` and the column type), 500-row
  multi-VALUES ``INSERT ... ON CONFLICT (id) DO NOTHING`` statements, one
  commit per 1000 rows (the product's batch), the product's own connection
  settings, the same schema and indexes, in one process with no network;
- **the PostgreSQL ceilings**: the same events staged in advance (``COPY``, not
  timed) and moved by the server's own ``INSERT ... SELECT ... ORDER BY n ON
  CONFLICT (id) DO NOTHING``, 1000 rows and one commit at a time, through
  psycopg (the reference the target names); and the fastest way known, the
  same events as ``COPY`` text made in advance, copied straight into
  ``events`` 1000 rows and one commit at a time (no conflict handling: none of
  these events is archived yet);
- **the naive baseline**: one ORM insert and commit per event;
- **flatness**: the peak RSS of the ingest (both processes) for a larger backlog.

Each side runs ``--runs`` times, end-to-end and ceiling alternating; the
table gives the median run and the spread (fastest to slowest).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import chain
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.orm import Session, registry

from benchmarks.machine import facts_line
from benchmarks.results import write_section
from ingest import migrate
from ingest.database import sqlite_pragmas
from ingest.events import Event, normalise
from ingest.prepare import copy_lines, sqlite_row, sqlite_time
from ingest.rows import OPTIONAL_TEXT, plain_row
from ingest.schema import EVENT_COLUMNS, events
from ingest.simulator import generate_events

CLI = [sys.executable, "-m", "ingest.cli"]
UNSEALED_CLI = [sys.executable, "-m", "benchmarks.unsealed"]
"""The same CLI with sealing stubbed out: the other side of the sealing-cost ratio."""
PG_URL = os.environ.get("GRANTEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KEY = "bench_" + uuid.uuid4().hex
BATCH = 1000
"""Rows per commit in the ceilings: the product's default ``--batch-size``."""
PER_STATEMENT = 500
"""Rows per multi-VALUES statement in the SQLite ceiling (the product's, on this SQLite)."""

SEALED = "end-to-end, SQLite (the CLI)"
UNSEALED = "end-to-end, SQLite, without sealing"
PG_E2E = "end-to-end, PostgreSQL (the CLI)"
SQLITE_CEILING = "ceiling: sqlite3, prepared rows, 500-row statements"
PG_CEILING = "ceiling: PostgreSQL INSERT ... SELECT ... ON CONFLICT via psycopg"
PG_COPY_CEILING = "ceiling: PostgreSQL COPY straight into events via psycopg"
NAIVE = "naive: one ORM insert and commit per event"


@dataclass
class Sample:
    seconds: float
    cpu_seconds: float
    rss_mb: float | None = None


@dataclass
class Measure:
    """One side of a comparison: every run of it."""

    label: str
    events: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(s.seconds for s in self.samples)

    @property
    def rate(self) -> float:
        return self.events / self.median if self.samples else 0.0

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    @property
    def rss_mb(self) -> float | None:
        values = [s.rss_mb for s in self.samples if s.rss_mb is not None]
        return max(values) if values else None

    def spread(self) -> str:
        if len(self.samples) < 2:
            return "one run"
        times = sorted(s.seconds for s in self.samples)
        return f"{times[0]:.2f} to {times[-1]:.2f} s"


class SimulatorProcess:
    def __init__(self, backlog: int, seed: int = 42) -> None:
        env = dict(os.environ, GRANTEX_API_KEY=KEY)
        args = [*CLI, "simulate", "--port", "0", "--backlog", str(backlog), "--rate", "0",
                "--seed", str(seed), "--keepalive", "5"]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        url_line = self.proc.stdout.readline()
        start_line = self.proc.stdout.readline()
        match = re.search(r"(http://\S+)", url_line)
        if not match:
            self.proc.kill()
            raise RuntimeError(f"simulator did not start: {url_line!r} {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        self.base_url = match.group(1)
        self.history_start = start_line.strip().rsplit(" ", 1)[-1]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PeakRss:
    """Samples the high-water mark (VmHWM) of a process and of its descendants (the ingest's
    reader process) until it exits; the figure is their sum, an upper bound on their peak
    together.

    Not ``ru_maxrss``: that also counts the pages a child shares with its
    parent between fork and exec, so a large benchmark process would inflate
    the figure.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peaks: dict[int, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            for pid in family(self.pid):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peaks[pid] = max(self.peaks.get(pid, 0), int(line.split()[1]))
                except (OSError, ValueError):
                    pass
            self._done.wait(0.1)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    @property
    def kb(self) -> int:
        return sum(self.peaks.values())

    @property
    def mb(self) -> float:
        return self.kb / 1024


def family(pid: int) -> list[int]:
    """``pid`` and its living descendants."""
    found, at = [pid], 0
    while at < len(found):
        try:
            tasks = Path(f"/proc/{found[at]}/task").iterdir()
            for task in tasks:
                found += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            pass
        at += 1
    return found


@dataclass
class ChildResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    rss_mb: float
    cpu_seconds: float = 0.0
    """User plus system time of the child (exact: the rusage of the children waited for)."""


def run_measured(
    args: list[str], env: dict[str, str] | None = None, keep_stdout: bool = True
) -> ChildResult:
    """Run ``args`` to the end: its output, wall seconds and own peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        env=env,
        stdout=subprocess.PIPE if keep_stdout else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = PeakRss(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    peak.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return ChildResult(proc.returncode, out or "", err, seconds, peak.mb, cpu)


def run_ingest(db_url: str, sim: SimulatorProcess, count: int, sealed: bool = True) -> Sample:
    env = dict(os.environ, GRANTEX_API_KEY=KEY)
    args = [
        *(CLI if sealed else UNSEALED_CLI), "ingest", "--db", db_url, "--base-url", sim.base_url,
        "--since", sim.history_start, "--max-events", str(count), "--max-runtime", "1800",
        "--quiet",
    ]  # fmt: skip
    run = run_measured(args, env, keep_stdout=False)
    if run.returncode != 0:
        raise RuntimeError(f"ingest failed ({run.returncode}): {run.stderr[-2000:]}")
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
    engine.dispose()
    if stored != count:
        raise RuntimeError(f"archive holds {stored} events, expected {count}")
    return Sample(run.seconds, run.cpu_seconds, run.rss_mb)


def backlog_events(count: int, seed: int) -> list[Event]:
    """The simulator's backlog for ``seed``, normalised in advance (as the ceilings take it)."""
    start = datetime.now(timezone.utc) - timedelta(days=1)
    out = []
    for envelope in generate_events(seed, start, count, 86400 / max(count, 1), "live"):
        event = normalise(json.dumps(envelope, separators=(",", ":")))
        assert isinstance(event, Event)
        out.append(event)
    return out


def timed(work: Callable[[], None]) -> Sample:
    started, cpu = time.perf_counter(), time.process_time()
    work()
    return Sample(time.perf_counter() - started, time.process_time() - cpu)


def sqlite_ceiling(rows: list[tuple[Any, ...]], path: Path) -> Sample:
    """The rows into a fresh archive file by plain ``sqlite3``, as fast as known."""
    migrate.upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path, isolation_level=None)
    sqlite_pragmas(conn)
    columns = ", ".join(EVENT_COLUMNS)
    group = "(" + ", ".join(
        "NULLIF(?, '')" if name in OPTIONAL_TEXT else "?" for name in EVENT_COLUMNS
    ) + ", 'stream')"  # fmt: skip
    head = f"INSERT INTO events ({columns}, channel) VALUES "
    tail = " ON CONFLICT (id) DO NOTHING"
    many = head + ", ".join([group] * PER_STATEMENT) + tail
    one = head + group + tail
    cursor = conn.cursor()

    def work() -> None:
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            full = len(batch) - len(batch) % PER_STATEMENT
            cursor.execute("BEGIN")
            for at in range(0, full, PER_STATEMENT):
                cursor.execute(many, list(chain.from_iterable(batch[at : at + PER_STATEMENT])))
            if full < len(batch):
                cursor.executemany(one, batch[full:])
            cursor.execute("COMMIT")

    sample = timed(work)
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if stored != len(rows):
        raise RuntimeError(f"ceiling stored {stored} rows, expected {len(rows)}")
    return sample


def in_fresh_pg_schema(
    name: str, expected: int, prepare: Callable[[psycopg.Connection[Any]], Callable[[], None]]
) -> Sample:
    """Time the work ``prepare`` sets up (untimed) on a connection to a fresh schema; the
    schema must then hold ``expected`` events."""
    _, schema = fresh_pg_schema()
    try:
        dsn = PG_URL.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, options=f"-c search_path={schema}") as conn:
            sample = timed(prepare(conn))
            stored = conn.execute("SELECT count(*) FROM events").fetchone()
    finally:
        drop_pg_schema(schema)
    if stored is None or stored[0] != expected:
        raise RuntimeError(f"{name} stored {stored}, expected {expected}")
    return sample


def pg_ceiling(backlog: list[Event], received_at: datetime) -> Sample:
    """The events staged by COPY (not timed), then moved by the server, 1000 rows a commit."""
    columns = ", ".join(EVENT_COLUMNS)

    def prepare(conn: psycopg.Connection[Any]) -> Callable[[], None]:
        conn.execute(f"CREATE TABLE staging (n integer PRIMARY KEY, {STAGING_COLUMNS})")
        with conn.cursor().copy(f"COPY staging (n, {columns}) FROM STDIN") as copy:
            for n, event in enumerate(backlog):
                copy.write_row((n, event.id, "default", event.type, event.occurred_at,
                                received_at, *event[4:13], event.payload))  # fmt: skip
        conn.execute("ANALYZE staging")
        conn.commit()
        statement = (
            f"INSERT INTO events ({columns}, channel) SELECT {columns}, 'stream' FROM staging "
            "WHERE n >= %s AND n < %s ORDER BY n ON CONFLICT (id) DO NOTHING"
        )

        def work() -> None:
            for start in range(0, len(backlog), BATCH):
                conn.execute(statement, (start, start + BATCH))
                conn.commit()

        return work

    return in_fresh_pg_schema("PostgreSQL ceiling", len(backlog), prepare)


def pg_copy_ceiling(backlog: list[Event], received_at: datetime) -> Sample:
    """The events' ``COPY`` text made in advance (not timed), copied straight into
    ``events``, 1000 rows and one commit at a time."""
    statement = f"COPY events ({', '.join(EVENT_COLUMNS)}) FROM STDIN"

    def prepare(conn: psycopg.Connection[Any]) -> Callable[[], None]:
        received_text = sqlite_time(received_at)
        lines = copy_lines([sqlite_row(event, "default", received_text) for event in backlog])
        blocks = [b"".join(lines[i : i + BATCH]) for i in range(0, len(lines), BATCH)]

        def work() -> None:
            for block in blocks:
                with conn.cursor().copy(statement) as copy:
                    copy.write(block)
                conn.commit()

        return work

    return in_fresh_pg_schema("PostgreSQL COPY ceiling", len(backlog), prepare)


STAGING_COLUMNS = (
    "id text, source text, type text, occurred_at timestamptz, received_at timestamptz, "
    "grant_id text, agent_id text, principal_id text, revoked_by text, token_id text, "
    "method text, percentage double precision, remaining double precision, "
    "initial double precision, payload text"
)


def naive(backlog: list[Event], workdir: Path, received_text: str) -> Sample:
    url = f"sqlite:///{workdir / 'naive.db'}"
    migrate.upgrade(url)
    mapper = registry()

    class Row:
        pass

    mapper.map_imperatively(Row, events)
    engine = sa.create_engine(url)

    def work() -> None:
        with Session(engine) as session:
            for event in backlog:
                record = Row()
                values = plain_row(event, "default", received_text)
                for name, value in zip(EVENT_COLUMNS, values, strict=True):
                    if name in ("occurred_at", "received_at"):
                        value = datetime.fromisoformat(str(value))
                    setattr(record, name, value)
                session.add(record)
                session.commit()

    sample = timed(work)
    engine.dispose()
    return sample


def fresh_pg_schema() -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    migrate.upgrade(url)
    return url, schema


def drop_pg_schema(schema: str) -> None:
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def report(m: Measure, sample: Sample, i: int) -> None:
    rss = f", peak RSS {sample.rss_mb:.0f} MB" if sample.rss_mb is not None else ""
    print(
        f"  {m.label} {i + 1}: {m.events / sample.seconds:,.0f} events/s, "
        f"{sample.seconds:.2f} s, CPU {sample.cpu_seconds:.1f} s{rss}",
        flush=True,
    )


def sqlite_side(args: argparse.Namespace, workdir: Path, backlog: list[Event]) -> list[Measure]:
    """End-to-end with and without sealing, and the ceiling, alternating, on the same events."""
    received_text = sqlite_time(datetime.now(timezone.utc))
    rows = [sqlite_row(event, "default", received_text) for event in backlog]
    sealed, unsealed = Measure(SEALED, args.events), Measure(UNSEALED, args.events)
    ceiling = Measure(SQLITE_CEILING, args.events)
    sim = SimulatorProcess(args.events)
    try:
        for i in range(args.runs):
            for m in (sealed, unsealed, ceiling):
                path = workdir / f"run-{i}.db"
                if m is ceiling:
                    sample = sqlite_ceiling(rows, path)
                else:
                    sample = run_ingest(f"sqlite:///{path}", sim, args.events, m is sealed)
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{path}{suffix}").unlink(missing_ok=True)
                m.samples.append(sample)
                report(m, sample, i)
    finally:
        sim.close()
    return [sealed, unsealed, ceiling]


def postgres_side(args: argparse.Namespace, backlog: list[Event]) -> list[Measure]:
    e2e, ceiling = Measure(PG_E2E, args.events), Measure(PG_CEILING, args.events)
    copy_ceiling = Measure(PG_COPY_CEILING, args.events)
    received_at = datetime.now(timezone.utc)
    sim = SimulatorProcess(args.events)
    try:
        for i in range(args.pg_runs):
            url, schema = fresh_pg_schema()
            try:
                sample = run_ingest(url, sim, args.events)
            finally:
                drop_pg_schema(schema)
            e2e.samples.append(sample)
            report(e2e, sample, i)
            for m, measure in ((ceiling, pg_ceiling), (copy_ceiling, pg_copy_ceiling)):
                sample = measure(backlog, received_at)
                m.samples.append(sample)
                report(m, sample, i)
    finally:
        sim.close()
    return [e2e, ceiling, copy_ceiling]


def flat_side(args: argparse.Namespace, workdir: Path) -> Measure:
    m = Measure(f"end-to-end, SQLite, {args.flat_events:,} backlog", args.flat_events)
    print(f"building a {args.flat_events:,}-event backlog...", flush=True)
    sim = SimulatorProcess(args.flat_events, seed=43)
    try:
        sample = run_ingest(f"sqlite:///{workdir / 'flat.db'}", sim, args.flat_events)
    finally:
        sim.close()
    m.samples.append(sample)
    report(m, sample, 0)
    return m


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--flat-events",
        type=int,
        default=4_000_000,
        help="backlog for the RSS flatness check (0 skips it)",
    )
    parser.add_argument("--naive-events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3, help="runs of each SQLite side")
    parser.add_argument("--pg-runs", type=int, default=3, help="runs of each PostgreSQL side")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    results: list[Measure] = []
    print(f"normalising a {args.events:,}-event backlog for the ceilings...", flush=True)
    backlog = backlog_events(args.events, 42)
    with tempfile.TemporaryDirectory(prefix="gxa-bench-") as tmp:
        workdir = Path(tmp)
        results += sqlite_side(args, workdir, backlog)
        if not args.no_postgres:
            results += postgres_side(args, backlog)
        if args.naive_events:
            m = Measure(NAIVE, min(args.naive_events, len(backlog)))
            received = sqlite_time(datetime.now(timezone.utc))
            m.samples.append(naive(backlog[: m.events], workdir, received))
            report(m, m.samples[0], 0)
            results.append(m)
        del backlog
        if args.flat_events:
            results.append(flat_side(args, workdir))
    table = render(results, args)
    print()
    print(table)
    if not args.no_write:
        write_section("ingest", table)


def command(args: argparse.Namespace) -> str:
    parts = ["python -m benchmarks.ingest", f"--events {args.events}"]
    parts.append(f"--flat-events {args.flat_events}")
    parts.append(f"--runs {args.runs}")
    parts.append("--no-postgres" if args.no_postgres else f"--pg-runs {args.pg_runs}")
    return " ".join(parts)


def render(results: list[Measure], args: argparse.Namespace) -> str:
    by_label = {m.label: m for m in results}
    engines = ("sqlite",) if args.no_postgres else ("sqlite", "postgresql")
    lines = [
        facts_line(command(args), engines, PG_URL),
        "",
        "| measure | events | runs | median s | spread | events/s | CPU s (median) | peak RSS |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for m in results:
        rss = f"{m.rss_mb:.0f} MB" if m.rss_mb is not None else "-"
        lines.append(
            f"| {m.label} | {m.events:,} | {len(m.samples)} | {m.median:.2f} | {m.spread()} "
            f"| {m.rate:,.0f} | {m.cpu:.1f} | {rss} |"
        )
    lines += ["", "| ratio (medians, same run) | value | target | |", "|---|---:|---|---|"]
    lines += ratio_lines(by_label)
    flat = [m for m in results if "backlog" in m.label]
    e2e = by_label.get(SEALED)
    if e2e and flat and e2e.rss_mb and flat[0].rss_mb:
        worst = max(e2e.rss_mb, flat[0].rss_mb)
        lines.append(
            f"| peak RSS, {flat[0].events:,} vs {e2e.events:,} backlog | "
            f"{flat[0].rss_mb:.0f} MB vs {e2e.rss_mb:.0f} MB "
            f"({(flat[0].rss_mb / e2e.rss_mb - 1) * 100:+.0f}%) | ≤ 250 MB, flat | "
            f"{verdict(worst <= 250)} |"
        )
    return "\n".join(lines)


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def ratio_lines(by_label: dict[str, Measure]) -> list[str]:
    lines = []
    pairs = (
        (SEALED, SQLITE_CEILING, "SQLite end-to-end / ceiling", 0.7),
        (UNSEALED, SQLITE_CEILING, "SQLite end-to-end without sealing / ceiling", None),
        (PG_E2E, PG_CEILING, "PostgreSQL end-to-end / INSERT ... SELECT ceiling", 0.7),
        (PG_E2E, PG_COPY_CEILING, "PostgreSQL end-to-end / COPY ceiling (the strongest)", 0.7),
    )
    for product, ceiling, name, target in pairs:
        a, b = by_label.get(product), by_label.get(ceiling)
        if a is None or b is None:
            continue
        value = a.rate / b.rate
        goal = f"≥ {target:.1f}x" if target is not None else ""
        mark = verdict(value >= target) if target is not None else ""
        if value > 1:
            mark = "the ceiling is wrong: the product beats it"
        lines.append(f"| {name} | {value:.2f}x | {goal} | {mark} |")
    sealed, unsealed = by_label.get(SEALED), by_label.get(UNSEALED)
    if sealed and unsealed:
        cost = 1 - sealed.rate / unsealed.rate
        lines.append(
            f"| sealing's cost (1 - with / without) | {cost * 100:.0f}% | ≤ 10% | "
            f"{verdict(cost <= 0.10)} |"
        )
    return lines


if __name__ == "__main__":
    main()
