"""Hash chain benchmark: `seal` of an archive from before the chain, then `verify-archive`.

Run with ``make bench-chain`` (the 10,000,000-event archive of
``benchmarks.analytics``) or ``python -m benchmarks.chain --help``. In one run:

- seal: a copy of the cached archive, taken back to schema revision 0006
  (before the chain: Alembic drops ``chain_links`` and ``chain_head``, the rows
  stay), then the real ``grantex-archive db upgrade`` and ``grantex-archive
  seal`` processes; wall time and peak RSS of ``seal``;
- verify: the real ``grantex-archive verify-archive`` process over the sealed
  copy, repeated; wall time, rows/s and peak RSS;
- the ceiling, alternating with verify on the same file: a plain ``python``
  process that reads the same columns of the same rows (and every link) with
  plain ``sqlite3`` and hashes each row's ``repr`` with ``hashlib.sha256``;
- flatness: verify-archive's peak RSS on a small archive (sealed the same way)
  against the large one.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command

from benchmarks.analytics import WORK, ensure_archive
from benchmarks.ingest import ChildResult, run_measured
from benchmarks.machine import facts_line
from benchmarks.results import write_section
from ingest.migrate import alembic_config
from ingest.seal.chain import TABLES, select_rows

CLI = [sys.executable, "-m", "ingest.cli"]
PRE_CHAIN = "0006"
"""The schema revision before the hash chain (0007 adds it)."""


def ceiling_queries() -> list[str]:
    """What verify reads, as plain statements: every link, then each sealed table's rows."""
    queries = ["SELECT n, kind, prev, keys, count, digests, created_at, hash FROM chain_links"]
    for kind in TABLES:
        where = "outcome <> 'running'" if kind == "runs" else "1 = 1"
        queries.append(select_rows(kind, where))
    return queries


CEILING = """
import hashlib, sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
sha256 = hashlib.sha256
rows = 0
for query in sys.argv[2:]:
    cursor = conn.execute(query)
    while batch := cursor.fetchmany(10000):
        for row in batch:
            sha256(repr(row).encode()).digest()
        rows += len(batch)
print(rows)
"""
"""The ceiling's whole program: each row read as a tuple, the SHA-256 of its ``repr``. It
imports nothing else, so its start-up is the interpreter's alone."""


@dataclass
class Series:
    """One measure repeated: wall seconds and peak RSS (MB) of each run."""

    label: str
    rows: int
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)

    def add(self, run: ChildResult) -> None:
        self.seconds.append(run.seconds)
        self.cpu.append(run.cpu_seconds)
        self.rss_mb.append(run.rss_mb)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.rows / self.median

    def spread(self) -> str:
        if len(self.seconds) < 2:
            return "one run"
        return f"{min(self.seconds):.1f} to {max(self.seconds):.1f} s"


def checked(args: list[str]) -> ChildResult:
    run = run_measured(args)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:5])} failed ({run.returncode}): {run.stderr[-2000:]}")
    return run


def pre_chain_copy(events: int, seed: int, name: str) -> Path:
    """A copy of the cached archive as it was before the chain (revision 0006)."""
    source = ensure_archive(events, seed, rebuild=False).path
    copy = WORK / f"chain-{name}-{events}-{seed}.db"
    remove(copy)
    print(f"copying {source.name} to {copy.name}...", flush=True)
    shutil.copyfile(source, copy)
    command.downgrade(alembic_config(f"sqlite:///{copy}"), PRE_CHAIN)
    return copy


def remove(copy: Path) -> None:
    for path in (copy, *(Path(f"{copy}{s}") for s in ("-wal", "-shm"))):
        path.unlink(missing_ok=True)


def upgrade_and_seal(copy: Path) -> ChildResult:
    """The real `db upgrade` (marks the rows already there), then the timed `seal`."""
    url = f"sqlite:///{copy}"
    checked([*CLI, "db", "upgrade", "--db", url])
    print("sealing...", flush=True)
    return checked([*CLI, "seal", "--db", url])


def sealed_rows(copy: Path) -> int:
    """How many rows verify-archive checks: every event and rejected frame, final runs."""
    conn = sqlite3.connect(copy)
    try:
        (total,) = conn.execute(
            "SELECT (SELECT count(*) FROM events) + (SELECT count(*) FROM rejected_events)"
            " + (SELECT count(*) FROM ingest_runs WHERE outcome <> 'running')"
        ).fetchone()
    finally:
        conn.close()
    return int(total)


def warm(path: Path) -> None:
    """Read the file once so that every measured run starts from the page cache."""
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass


def verify_and_ceiling(copy: Path, runs: int) -> tuple[Series, Series]:
    rows = sealed_rows(copy)
    verify = Series("verify-archive (the CLI)", rows)
    ceiling = Series("ceiling: sqlite3 tuples + hashlib.sha256(repr(row))", rows)
    warm(copy)
    for i in range(runs):
        # Alternating, so both sides see the same machine and the same cache.
        run = checked([*CLI, "verify-archive", "--db", f"sqlite:///{copy}"])
        verify.add(run)
        print(f"  verify {i + 1}: {run.seconds:.1f} s, {run.rss_mb:.0f} MB", flush=True)
        run = checked([sys.executable, "-c", CEILING, str(copy), *ceiling_queries()])
        if int(run.stdout.split()[-1]) < rows:
            raise RuntimeError(f"the ceiling read {run.stdout.strip()} rows, not {rows}+")
        ceiling.add(run)
        print(f"  ceiling {i + 1}: {run.seconds:.1f} s, {run.rss_mb:.0f} MB", flush=True)
    return verify, ceiling


def small_verify_rss(events: int, seed: int) -> tuple[int, float]:
    """verify-archive's peak RSS on a small archive sealed the same way (one run)."""
    copy = pre_chain_copy(events, seed, "small")
    try:
        upgrade_and_seal(copy)
        run = checked([*CLI, "verify-archive", "--db", f"sqlite:///{copy}"])
    finally:
        remove(copy)
    return events, run.rss_mb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", type=int, default=3, help="verify and ceiling runs each")
    parser.add_argument(
        "--small-events", type=int, default=200_000,
        help="archive for the flatness check of verify's RSS (0 or --events skips it)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the sealed copy")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    copy = pre_chain_copy(args.events, args.seed, "large")
    try:
        seal = upgrade_and_seal(copy)
        print(f"  seal: {seal.seconds:.1f} s, {seal.rss_mb:.0f} MB", flush=True)
        verify, ceiling = verify_and_ceiling(copy, args.runs)
    finally:
        if not args.keep:
            remove(copy)
    small = None
    if args.small_events and args.small_events != args.events:
        small = small_verify_rss(args.small_events, args.seed)
    table = render(args, seal, verify, ceiling, small)
    print()
    print(table)
    if not args.no_write:
        write_section("chain", table, METHOD)


def render(
    args: argparse.Namespace,
    seal: ChildResult,
    verify: Series,
    ceiling: Series,
    small: tuple[int, float] | None,
) -> str:
    ratio = verify.rate / ceiling.rate
    lines = [
        facts_line(f"python -m benchmarks.chain --events {args.events} --runs {args.runs}"),
        "",
        "| measure | rows | runs | median seconds | spread | rows/s | median CPU seconds "
        "| peak RSS |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| seal (the CLI, {args.events:,} events from before the chain) | {verify.rows:,} | 1 "
        f"| {seal.seconds:.1f} | one run | {verify.rows / seal.seconds:,.0f} "
        f"| {seal.cpu_seconds:.1f} | {seal.rss_mb:.0f} MB |",
    ]
    for series in (verify, ceiling):
        lines.append(
            f"| {series.label} | {series.rows:,} | {len(series.seconds)} | {series.median:.1f} "
            f"| {series.spread()} | {series.rate:,.0f} | {series.median_cpu:.1f} "
            f"| {max(series.rss_mb):.0f} MB |"
        )
    verdict = "meets" if ratio >= 0.5 else "misses"
    lines += [
        "",
        f"verify-archive / ceiling: **{ratio:.2f}x** in rows/s over wall time ({verdict} the "
        f"0.50x target); {ceiling.median_cpu / verify.median_cpu:.2f}x in CPU time",
    ]
    if small is not None:
        events, rss = small
        lines.append(
            f"verify-archive peak RSS, {args.events:,} vs {events:,} events: "
            f"{max(verify.rss_mb):.0f} MB vs {rss:.0f} MB"
        )
    return "\n".join(lines)


METHOD = """## Hash chain

Command: `make bench-chain` (= `python -m benchmarks.chain --events 10000000`);
`make bench-chain-quick` runs a 200,000-event archive without writing this file.

Method, all in one run on the same machine and the same archive:

- **Archive.** The cached archive of `benchmarks.analytics` (built by plain
  inserts, so it predates the chain), copied, and the copy taken back to schema
  revision 0006 with Alembic (which drops `chain_links` and `chain_head`; the
  rows stay). The real `grantex-archive db upgrade` then records how far the
  unsealed rows go.
- **Seal.** The real `grantex-archive seal` process, once: wall time (start-up
  included) and rows/s over every row it seals.
- **Verify.** The real `grantex-archive verify-archive` process over the sealed
  copy: wall time, start-up included; rows/s counts every row it checks
  (events, rejected frames, final runs; the links are read on top).
- **Ceiling.** A plain `python` process (the same interpreter, start-up
  included) that reads, with `sqlite3` tuples, every link and the same
  columns of the same rows verify reads, and computes `hashlib.sha256` over
  each row's `repr(row).encode()`: reading and hashing without the canonical
  form, the merge with the links or any check. It runs alternately with
  verify, after the file was read once into the page cache; median and the
  range (fastest to slowest) of the runs. CPU seconds (user + system, from
  the rusage of the waited-for child) are given beside wall time: on a shared
  machine they show the work each side does when wall time is stretched by
  other processes.
- **Peak RSS** is each process's own high-water mark (`VmHWM` in
  `/proc/PID/status`), read every 0.1 s until it exits; unlike `ru_maxrss` it
  does not count the benchmark's own pages. Flatness: verify-archive's peak
  RSS on a 200,000-event archive sealed the same way, against the large one.
- **Target** (issue 12): verify-archive at least 0.50x the ceiling's rows/s,
  with bounded memory."""


if __name__ == "__main__":
    main()
