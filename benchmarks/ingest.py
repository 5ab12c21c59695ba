"""Ingest benchmark: a backlog streamed over loopback into fresh archives.

Run with ``make bench`` (1M events, plus a 4M run for the memory check) or
``python -m benchmarks.ingest --help``. In one run it measures:

- end-to-end: the real ``grantex-archive ingest`` process replaying the
  simulator's backlog (``--since`` its start, ``--max-events N``) into a fresh
  SQLite file and a fresh PostgreSQL schema; events/s over the process's
  wall time, and its peak RSS;
- the ceiling: the same rows inserted with plain ``sqlite3`` ``executemany``
  in batches of 1000 into the same schema and indexes, no network (rows built
  the straightforward way, ``None`` for missing values);
- the naive baseline: one ORM insert and commit per event;
- flatness: peak RSS of the ingest process for a larger backlog.

The simulator runs as a separate process (``grantex-archive simulate``), as
does each ingest, so the two share the machine's cores the way a real
deployment shares a host with the network.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, registry

from benchmarks.results import write_section
from ingest import migrate
from ingest.events import Event, normalise
from ingest.rows import plain_row
from ingest.schema import EVENT_COLUMNS, events
from ingest.simulator import generate_events

CLI = [sys.executable, "-m", "ingest.cli"]
UNSEALED_CLI = [sys.executable, "-m", "benchmarks.unsealed"]
"""The same CLI with sealing stubbed out: the other side of the sealing-cost ratio."""
PG_URL = os.environ.get("GRANTEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
KEY = "bench_" + uuid.uuid4().hex
SEALING_OFF = "end-to-end, SQLite, without sealing"


@dataclass
class Measure:
    label: str
    events: int
    seconds: float
    rss_mb: float | None = None
    cpu_seconds: float | None = None
    spread: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


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
    """Samples the process's own high-water mark (VmHWM) until it exits.

    Not ``ru_maxrss``: that also counts the pages a child shares with its
    parent between fork and exec, so a large benchmark process would inflate
    the figure.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.kb = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.kb = max(self.kb, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            self._done.wait(0.1)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    @property
    def mb(self) -> float:
        return self.kb / 1024


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


def run_ingest(db_url: str, sim: SimulatorProcess, count: int, sealed: bool = True) -> Measure:
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
    return Measure("", count, run.seconds, run.rss_mb, run.cpu_seconds)


def backlog_rows(count: int, seed: int) -> list[tuple[object, ...]]:
    start = datetime.now(timezone.utc) - timedelta(days=1)
    received = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    rows = []
    for envelope in generate_events(seed, start, count, 86400 / max(count, 1), "live"):
        event = normalise(json.dumps(envelope, separators=(",", ":")))
        assert isinstance(event, Event)
        rows.append(plain_row(event, "default", received))
    return rows


def ceiling(rows: list[tuple[object, ...]], workdir: Path) -> Measure:
    path = workdir / "ceiling.db"
    migrate.upgrade(f"sqlite:///{path}")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    columns = ", ".join(EVENT_COLUMNS)
    marks = ", ".join("?" for _ in EVENT_COLUMNS)
    sql = f"INSERT INTO events ({columns}) VALUES ({marks}) ON CONFLICT (id) DO NOTHING"
    started = time.perf_counter()
    for start in range(0, len(rows), 1000):
        conn.executemany(sql, rows[start : start + 1000])
        conn.commit()
    seconds = time.perf_counter() - started
    conn.close()
    return Measure("ceiling: sqlite3 executemany, batches of 1000", len(rows), seconds)


def naive(rows: list[tuple[object, ...]], workdir: Path) -> Measure:
    url = f"sqlite:///{workdir / 'naive.db'}"
    migrate.upgrade(url)
    mapper = registry()

    class Row:
        pass

    mapper.map_imperatively(Row, events)
    engine = sa.create_engine(url)
    started = time.perf_counter()
    with Session(engine) as session:
        for values in rows:
            record = Row()
            for name, value in zip(EVENT_COLUMNS, values, strict=True):
                if name in ("occurred_at", "received_at"):
                    value = datetime.fromisoformat(str(value))
                setattr(record, name, value)
            session.add(record)
            session.commit()
    seconds = time.perf_counter() - started
    engine.dispose()
    return Measure("naive: one ORM insert and commit per event", len(rows), seconds)


def sealing_pair(sim: SimulatorProcess, workdir: Path, count: int, runs: int) -> list[Measure]:
    """End-to-end into fresh SQLite files with and without sealing, alternating, from the
    same simulator (the same events): the median run of each side, with the range."""
    sides: dict[bool, list[Measure]] = {True: [], False: []}
    for i in range(runs):
        for sealed in (True, False):
            path = workdir / f"e2e-{'sealed' if sealed else 'unsealed'}-{i}.db"
            m = run_ingest(f"sqlite:///{path}", sim, count, sealed=sealed)
            sides[sealed].append(m)
            path.unlink()
            print(
                f"  {'with' if sealed else 'without'} sealing {i + 1}: {m.rate:,.0f} events/s, "
                f"CPU {m.cpu_seconds:.1f} s, peak RSS {m.rss_mb:.0f} MB",
                flush=True,
            )
    medians = []
    for sealed, label in ((True, "end-to-end, SQLite"), (False, SEALING_OFF)):
        ordered = sorted(sides[sealed], key=lambda m: m.seconds)
        median = ordered[len(ordered) // 2]
        median.label = label
        median.spread = f"{ordered[0].seconds:.1f} to {ordered[-1].seconds:.1f} s"
        median.cpu_seconds = statistics.median(m.cpu_seconds or 0.0 for m in ordered)
        medians.append(median)
    return medians


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
    parser.add_argument(
        "--seal-runs", type=int, default=3,
        help="SQLite end-to-end runs with and without sealing, alternating",
    )  # fmt: skip
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    results: list[Measure] = []
    with tempfile.TemporaryDirectory(prefix="gxa-bench-") as tmp:
        workdir = Path(tmp)
        print(f"building a {args.events:,}-event backlog in the simulator...", flush=True)
        sim = SimulatorProcess(args.events)
        try:
            results += sealing_pair(sim, workdir, args.events, args.seal_runs)
            if not args.no_postgres:
                url, schema = fresh_pg_schema()
                try:
                    m = run_ingest(url, sim, args.events)
                finally:
                    drop_pg_schema(schema)
                m.label = "end-to-end, PostgreSQL"
                results.append(m)
                print(
                    f"  {m.label}: {m.rate:,.0f} events/s, peak RSS {m.rss_mb:.0f} MB", flush=True
                )
        finally:
            sim.close()

        rows = backlog_rows(args.events, 42)
        m = ceiling(rows, workdir)
        results.append(m)
        print(f"  {m.label}: {m.rate:,.0f} rows/s", flush=True)
        m = naive(rows[: args.naive_events], workdir)
        results.append(m)
        print(f"  {m.label}: {m.rate:,.0f} events/s", flush=True)
        del rows

        if args.flat_events:
            print(f"building a {args.flat_events:,}-event backlog...", flush=True)
            sim = SimulatorProcess(args.flat_events, seed=43)
            try:
                m = run_ingest(f"sqlite:///{workdir / 'flat.db'}", sim, args.flat_events)
            finally:
                sim.close()
            m.label = f"end-to-end, SQLite, {args.flat_events:,} backlog"
            results.append(m)
            print(f"  {m.label}: {m.rate:,.0f} events/s, peak RSS {m.rss_mb:.0f} MB", flush=True)

    table = render(results, args)
    print()
    print(table)
    if not args.no_write:
        write_section("ingest", table)


def render(results: list[Measure], args: argparse.Namespace) -> str:
    by_label = {m.label: m for m in results}
    lines = [
        f"Run on {datetime.now(timezone.utc):%Y-%m-%d} · Python {platform.python_version()} · "
        f"SQLite {sqlite3.sqlite_version} · {os.cpu_count()} cores · "
        f"`python -m benchmarks.ingest --events {args.events} --flat-events {args.flat_events}`",
        "",
        "| measure | events | seconds | events/s | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in results:
        rss = f"{m.rss_mb:.0f} MB" if m.rss_mb is not None else "-"
        lines.append(f"| {m.label} | {m.events:,} | {m.seconds:.1f} | {m.rate:,.0f} | {rss} |")
    e2e = by_label.get("end-to-end, SQLite")
    ceil = by_label.get("ceiling: sqlite3 executemany, batches of 1000")
    if e2e and ceil:
        lines += ["", f"SQLite end-to-end / ceiling: **{e2e.rate / ceil.rate:.2f}x**"]
    unsealed = by_label.get(SEALING_OFF)
    if e2e and unsealed:
        cost = 1 - e2e.rate / unsealed.rate
        verdict = "meets" if cost <= 0.10 else "misses"
        lines.append(
            f"Sealing's cost (SQLite end-to-end with / without, median of {args.seal_runs} runs "
            f"each, alternating; with: {e2e.spread}, without: {unsealed.spread}): "
            f"**{cost * 100:.0f}%** of the throughput ({verdict} the 10% target); "
            f"CPU seconds of the ingest process, median: {e2e.cpu_seconds:.1f} with, "
            f"{unsealed.cpu_seconds:.1f} without"
        )
    flat = [m for m in results if "backlog" in m.label]
    if e2e and flat and e2e.rss_mb and flat[0].rss_mb:
        lines.append(
            f"Peak RSS, {flat[0].events:,} vs {e2e.events:,} backlog: "
            f"{flat[0].rss_mb:.0f} MB vs {e2e.rss_mb:.0f} MB "
            f"({(flat[0].rss_mb / e2e.rss_mb - 1) * 100:+.0f}%)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
