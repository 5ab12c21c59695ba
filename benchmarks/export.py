"""Export benchmark: audit exports of the 10,000,000-event benchmark archive.

Run with ``make bench-export`` (10,000,000 events) or
``python -m benchmarks.export --help``. Method, in one run:

- **Archive.** The analytics benchmark's cached SQLite archive
  (``benchmarks.analytics.ensure_archive``: simulator events over 90 days,
  built once) and an analytics copy of it, refreshed before the first export
  and not timed.
- **Exports.** Each is the real CLI in a process of its own
  (``python -m ingest.cli export -o PATH --no-refresh ...``) writing to
  ``benchmarks/.work/exports/``: the whole archive as CSV, gzipped CSV, JSON
  Lines, Parquet and Parquet partitioned by day; then CSV of the first tenth
  of the archive (``--until``) to compare memory with the whole; then a
  filtered export (one type for one agent). Seconds are the process's wall
  time, start-up, counting, writing, renaming and hashing for the manifest
  included; rows/s = rows / seconds; peak RSS is the process's own ``VmHWM``,
  sampled every 100 ms.
- **Checks.** The manifest's row count must equal a count of the same filter
  on the copy, and ``verify-export`` (also timed) must accept the file.
- **Ceilings.** DuckDB alone, in this process with two threads and no memory
  limit, writing the same columns of every row in one ``COPY`` without any
  order: CSV to ``/dev/null`` and Parquet to a file. No export that orders
  its rows can be faster than these on the same machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb

from benchmarks.analytics import START, WORK, calibrate, ensure_archive, reset_archive
from benchmarks.ingest import run_measured
from benchmarks.results import write_section

OUT = WORK / "exports"
COPY = WORK / "analytics"

# Targets (issue 4, 2-core machine).
CSV_TARGET = 1_000_000
PARQUET_TARGET = 2_000_000
RSS_TARGET_MB = 500.0


@dataclass
class Export:
    label: str
    args: list[str]
    name: str
    target: int | None = None  # rows/s
    rows: int = 0
    seconds: float = 0.0
    rss_mb: float = 0.0
    bytes: int = 0
    verify_seconds: float | None = None

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ingest.cli", *args]


def timed(args: list[str]) -> tuple[float, float]:
    """Run ``args``; its wall seconds and peak RSS (MB)."""
    run = run_measured(args, keep_stdout=False)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({run.returncode}): {run.stderr.strip()}")
    return run.seconds, run.rss_mb


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    Path(f"{path}.manifest.json").unlink(missing_ok=True)


def expected_rows(where: str) -> int:
    """What the copy holds for ``where``, counted apart from the exporter."""
    conn = duckdb.connect()
    try:
        conn.execute((COPY / "views.sql").read_text())
        return int(conn.execute(f"SELECT count(*) FROM events WHERE {where}").fetchall()[0][0])
    finally:
        conn.close()


def busiest_agent(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        (agent,) = conn.execute(
            "SELECT agent_id FROM events WHERE type = 'grant.created' AND seq <= 200000 "
            "GROUP BY agent_id ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    return str(agent)


def run(export: Export, db: list[str], where: str, verify: bool) -> None:
    path = OUT / export.name
    remove(path)
    print(f"  {export.label}...", end=" ", flush=True)
    seconds, rss = timed(cli("export", "-o", str(path), *export.args, *db))
    manifest = json.loads(Path(f"{path}.manifest.json").read_text())
    export.rows, export.seconds, export.rss_mb = int(manifest["rows"]), seconds, rss
    export.bytes = size_of(path)
    wanted = expected_rows(where)
    if export.rows != wanted:
        raise SystemExit(f"{export.label}: the manifest says {export.rows} rows, the copy {wanted}")
    if verify:
        export.verify_seconds, _ = timed(cli("verify-export", str(path)))
    print(
        f"{export.rows:,} rows in {seconds:.1f} s ({export.rate:,.0f}/s), peak RSS {rss:.0f} MB",
        flush=True,
    )
    remove(path)


@dataclass
class Ceiling:
    label: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def ceilings() -> list[Ceiling]:
    """DuckDB's own speed for the same columns, unordered, in one statement."""
    from queries.export import ALL_COLUMNS, CSV_OPTIONS, DEFAULT_COLUMNS

    conn = duckdb.connect(config={"threads": 2})
    out = []
    try:
        conn.execute((COPY / "views.sql").read_text())
        (rows,) = conn.execute("SELECT count(*) FROM events").fetchall()[0]
        for label, position, target, options in (
            ("CSV to /dev/null", 0, "/dev/null", CSV_OPTIONS),
            (
                "Parquet to a file",
                1,
                str(OUT / "ceiling.parquet"),
                "FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 100000",
            ),
        ):
            exprs = ", ".join(f"{ALL_COLUMNS[c][position]} AS {c}" for c in DEFAULT_COLUMNS)
            started = time.perf_counter()
            conn.execute(f"COPY (SELECT {exprs} FROM events) TO '{target}' ({options})")
            out.append(Ceiling(label, int(rows), time.perf_counter() - started))
            print(f"  ceiling, {label}: {out[-1].rate:,.0f} rows/s", flush=True)
        (OUT / "ceiling.parquet").unlink(missing_ok=True)
    finally:
        conn.close()
    return out


def render(
    exports: list[Export],
    limits: list[Ceiling],
    args: argparse.Namespace,
    events: int,
    calibration: str,
) -> str:
    lines = [
        f"Run on {datetime.now(timezone.utc):%Y-%m-%d} · Python {platform.python_version()} · "
        f'DuckDB {duckdb.__version__} · 2 cores · `python -m timeit "sum(range(1000))"`: '
        f"{calibration} · `python -m benchmarks.export --events {args.events}`",
        "",
        f"Archive: {events:,} events (the analytics benchmark's archive).",
        "",
        "| export | rows | seconds | rows/s | size | peak RSS | verify-export s | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in exports:
        if e.target is None:
            target = ""
        else:
            met = e.rate >= e.target
            target = f"≥ {e.target:,}/s: " + ("met" if met else "**not met**")
        verify = f"{e.verify_seconds:.1f}" if e.verify_seconds is not None else "-"
        lines.append(
            f"| {e.label} | {e.rows:,} | {e.seconds:.1f} | {e.rate:,.0f} | "
            f"{e.bytes / 1e6:,.0f} MB | {e.rss_mb:.0f} MB | {verify} | {target} |"
        )
    for c in limits:
        lines.append(
            f"| ceiling: DuckDB alone, unordered, {c.label} | {c.rows:,} | {c.seconds:.1f} | "
            f"{c.rate:,.0f} | - | - | - | |"
        )
    peak = max(exports, key=lambda e: e.rss_mb)
    tenth = next(e for e in exports if e.name == "tenth.csv")
    whole = next(e for e in exports if e.name == "all.csv")
    lines += [
        "",
        "| target | result | |",
        "|---|---|---|",
    ]
    for fmt, target in (("CSV", CSV_TARGET), ("Parquet", PARQUET_TARGET)):
        chosen = [e for e in exports if e.target == target]
        slowest = min(chosen, key=lambda e: e.rate)
        met = slowest.rate >= target
        lines.append(
            f"| {fmt} ≥ {target:,} rows/s | {slowest.rate:,.0f} ({slowest.label}) | "
            + ("met" if met else "**not met**")
            + " |"
        )
    lines.append(
        f"| peak RSS ≤ {RSS_TARGET_MB:.0f} MB regardless of size | {peak.rss_mb:.0f} MB "
        f"({peak.label}); CSV of a tenth {tenth.rss_mb:.0f} MB vs all {whole.rss_mb:.0f} MB | "
        + ("met" if peak.rss_mb <= RSS_TARGET_MB else "**not met**")
        + " |"
    )
    return "\n".join(lines)


METHOD = """## Export

Command: `make bench-export` (= `python -m benchmarks.export --events 10000000`);
`make bench-export-quick` runs 200,000 events without writing this file.

Method, all in one run on the same machine: the analytics benchmark's cached
archive and its analytics copy (refreshed first, not timed). Each export is the
real CLI in its own process (`grantex-archive export -o PATH --no-refresh
...`): the whole archive as CSV, gzipped CSV, JSON Lines, Parquet and Parquet
partitioned by day, then CSV of the first tenth of the archive (`--until`) to
compare memory with the whole, then one type for one agent. Seconds are the
process's wall time (start-up, counting, the DuckDB sort and write, the rename
and the SHA-256 for the manifest); rows/s = rows / seconds; peak RSS is the
process's own `VmHWM`. Each manifest's row count is checked against a count
of the same filter on the copy, and `verify-export` (timed, separately) must
accept the whole-archive CSV and Parquet files. The ceilings are DuckDB alone
(two threads, no memory limit) writing the same columns of every row in one
unordered `COPY`: CSV to `/dev/null`, Parquet to a file."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    calibration = calibrate()
    archive = ensure_archive(args.events, args.seed, False)
    reset_archive(archive)
    db = ["--db", archive.url, "--analytics-dir", str(COPY), "--no-refresh"]
    print("refreshing the analytics copy...", flush=True)
    timed(cli("refresh", "--db", archive.url, "--analytics-dir", str(COPY)))
    OUT.mkdir(parents=True, exist_ok=True)
    tenth = START + timedelta(seconds=archive.spacing_s * archive.events / 10)
    tenth_text = tenth.isoformat().replace("+00:00", "Z")
    agent = busiest_agent(archive.path)
    exports = [
        (Export("CSV", [], "all.csv", CSV_TARGET), "true", True),
        (Export("CSV, gzip", [], "all.csv.gz", CSV_TARGET), "true", False),
        (Export("JSON Lines", [], "all.jsonl"), "true", False),
        (Export("Parquet", [], "all.parquet", PARQUET_TARGET), "true", True),
        (
            Export("Parquet, by day", ["--partition-by", "day"], "days.parquet", PARQUET_TARGET),
            "true",
            False,
        ),
        (
            Export("CSV, first tenth (--until)", ["--until", tenth_text], "tenth.csv"),
            f"occurred_at < '{tenth_text}'",
            False,
        ),
        (
            Export(
                "CSV, grant.revoked of one agent",
                ["--type", "grant.revoked", "--agent-id", agent],
                "agent.csv",
            ),
            f"type = 'grant.revoked' AND (agent_id = '{agent}' OR grant_id IN "
            f"(SELECT grant_id FROM grants WHERE agent_id = '{agent}'))",
            False,
        ),
    ]
    print("exports (each a CLI process)...", flush=True)
    for export, where, verify in exports:
        run(export, db, where, verify)
    print("ceilings (DuckDB alone, unordered)...", flush=True)
    limits = ceilings()
    table = render([e for e, _, _ in exports], limits, args, archive.events, calibration)
    print()
    print(table)
    if not args.no_write:
        write_section("export", table, METHOD)


if __name__ == "__main__":
    main()
