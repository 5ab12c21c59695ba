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
  included; rows/s = rows / median seconds; peak RSS is the process's own
  ``VmHWM``, sampled every 100 ms, the highest of the runs.
- **Checks.** Each manifest's row count must equal a count of the same filter
  on the copy, and ``verify-export`` (also timed) must accept the whole
  archive's CSV and Parquet files.
- **Ceilings.** DuckDB alone, in this process with two threads and no memory
  limit, writing the same columns of every row in one ``COPY``: CSV to
  ``/dev/null`` and Parquet to a file, each once without any order and once
  in the export's own order (``queries.export.plan.select_sql``: by
  occurred_at, then id). Only the ``COPY`` is timed. The ordered ceiling does
  the export's work without its bounded memory, manifest or process; the
  unordered one shows what ordering costs DuckDB itself.
- **Repetitions.** Everything above runs ``--runs`` times (3 by default), in
  rounds: each round runs every export in turn, the CSV ceilings right after
  the CSV export and the Parquet ceilings right after the Parquet export.
  Each row reports the median and the spread (fastest to slowest run).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import duckdb

from benchmarks.analytics import START, WORK, ensure_archive, reset_archive
from benchmarks.ingest import run_measured
from benchmarks.machine import facts_line
from benchmarks.results import write_section

OUT = WORK / "exports"
COPY = WORK / "analytics"
CEILING_PARQUET = OUT / "ceiling.parquet"

# Targets (issue 4, 2-core machine).
CSV_TARGET = 1_000_000
PARQUET_TARGET = 2_000_000
RSS_TARGET_MB = 500.0


@dataclass
class Series:
    """One side of a comparison, repeated: the wall seconds of each run."""

    label: str
    rows: int = 0
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        return self.rows / self.median if self.seconds and self.median else 0.0

    def spread(self) -> str:
        """Fastest to slowest run."""
        if len(self.seconds) < 2:
            return "one run"
        return f"{min(self.seconds):.2f} to {max(self.seconds):.2f} s"


@dataclass
class Export(Series):
    """A product export: the CLI in its own process."""

    args: list[str] = field(default_factory=list)
    name: str = ""
    where: str = "true"
    target: int | None = None  # rows/s
    verify: bool = False
    rss_mb: list[float] = field(default_factory=list)
    bytes: int = 0
    verify_seconds: list[float] = field(default_factory=list)
    wanted: int | None = None  # rows of ``where`` on the copy, counted once


@dataclass
class Ceiling(Series):
    """DuckDB alone: one ``COPY`` of the export's columns, ordered or not."""

    fmt: str = "csv"
    ordered: bool = False


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


def copy_connection() -> duckdb.DuckDBPyConnection:
    """DuckDB over the analytics copy: two threads, no memory limit."""
    conn = duckdb.connect(config={"threads": 2})
    conn.execute((COPY / "views.sql").read_text())
    return conn


def expected_rows(where: str) -> int:
    """What the copy holds for ``where``, counted apart from the exporter."""
    conn = copy_connection()
    try:
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


def run(export: Export, db: list[str]) -> None:
    """One run of ``export``: the CLI's process timed, its manifest checked, its file verified."""
    path = OUT / export.name
    remove(path)
    print(f"  {export.label}...", end=" ", flush=True)
    seconds, rss = timed(cli("export", "-o", str(path), *export.args, *db))
    manifest = json.loads(Path(f"{path}.manifest.json").read_text())
    rows = int(manifest["rows"])
    if export.wanted is None:
        export.wanted = expected_rows(export.where)
    if rows != export.wanted:
        raise SystemExit(f"{export.label}: the manifest says {rows} rows, the copy {export.wanted}")
    export.rows = rows
    export.seconds.append(seconds)
    export.rss_mb.append(rss)
    export.bytes = size_of(path)
    if export.verify:
        verify_seconds, _ = timed(cli("verify-export", str(path)))
        export.verify_seconds.append(verify_seconds)
    print(f"{rows:,} rows in {seconds:.2f} s, peak RSS {rss:.0f} MB", flush=True)
    remove(path)


def ceiling_sql(fmt: str, ordered: bool) -> str:
    """The export's own SELECT of every row in ``fmt``'s form; without its ORDER BY if unordered."""
    from queries.export import ExportSpec
    from queries.export.plan import select_sql

    sql = select_sql(ExportSpec(output="-", fmt=fmt), "true")
    unordered, order, _ = sql.partition(" ORDER BY ")
    if not order:
        raise SystemExit(f"the export's SELECT has no ORDER BY: {sql}")
    return sql if ordered else unordered


def measure_ceiling(ceiling: Ceiling) -> None:
    """One run of ``ceiling``: a fresh connection, and only the ``COPY`` timed."""
    from queries.export import CSV_OPTIONS, PARQUET_ROW_GROUP

    if ceiling.fmt == "csv":
        target, options = "/dev/null", CSV_OPTIONS
    else:
        target = str(CEILING_PARQUET)
        options = f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {PARQUET_ROW_GROUP}"
    sql = f"COPY ({ceiling_sql(ceiling.fmt, ceiling.ordered)}) TO '{target}' ({options})"
    conn = copy_connection()
    try:
        (total,) = conn.execute("SELECT count(*) FROM events").fetchall()[0]
        started = time.perf_counter()
        (written,) = conn.execute(sql).fetchall()[0]
        seconds = time.perf_counter() - started
    finally:
        conn.close()
        CEILING_PARQUET.unlink(missing_ok=True)
    if int(written) != int(total):
        raise SystemExit(f"{ceiling.label}: wrote {written} rows of {total}")
    ceiling.rows = int(total)
    ceiling.seconds.append(seconds)
    print(f"  {ceiling.label}: {seconds:.2f} s", flush=True)


def ceilings_for(fmt: str) -> list[Ceiling]:
    where = "CSV to /dev/null" if fmt == "csv" else "Parquet to a file"
    return [
        Ceiling(f"ceiling: DuckDB alone, {kind}, {where}", fmt=fmt, ordered=ordered)
        for kind, ordered in (("unordered", False), ("ordered", True))
    ]


def exports_to_run(archive_events: int, spacing_s: float, agent: str) -> list[Export]:
    tenth = START + timedelta(seconds=spacing_s * archive_events / 10)
    tenth_text = tenth.isoformat().replace("+00:00", "Z")
    return [
        Export("CSV", name="all.csv", target=CSV_TARGET, verify=True),
        Export("CSV, gzip", name="all.csv.gz", target=CSV_TARGET),
        Export("JSON Lines", name="all.jsonl"),
        Export("Parquet", name="all.parquet", target=PARQUET_TARGET, verify=True),
        Export(
            "Parquet, by day",
            args=["--partition-by", "day"],
            name="days.parquet",
            target=PARQUET_TARGET,
        ),
        Export(
            "CSV, first tenth (--until)",
            args=["--until", tenth_text],
            name="tenth.csv",
            where=f"occurred_at < '{tenth_text}'",
        ),
        Export(
            "CSV, grant.revoked of one agent",
            args=["--type", "grant.revoked", "--agent-id", agent],
            name="agent.csv",
            where=f"type = 'grant.revoked' AND (agent_id = '{agent}' OR grant_id IN "
            f"(SELECT grant_id FROM grants WHERE agent_id = '{agent}'))",
        ),
    ]


def ratio(product: Series, ceiling: Series) -> str:
    """Product rows/s over ceiling rows/s (medians), flagged when the product is faster."""
    value = product.rate / ceiling.rate
    return f"{value:.2f}x" + (
        " (faster than the ceiling: the ceiling is wrong)" if value > 1 else ""
    )


def seconds_cell(runs: list[float]) -> str:
    if not runs:
        return "-"
    if len(runs) < 2:
        return f"{runs[0]:.2f}"
    return f"{statistics.median(runs):.2f} ({min(runs):.2f} to {max(runs):.2f})"


def render(exports: list[Export], limits: dict[str, list[Ceiling]], command: str) -> str:
    from queries.export import EXPORT_MEMORY_LIMIT, PARQUET_SLICE_SHARE, SLICE_ROWS

    whole = next(e for e in exports if e.name == "all.csv")
    lines = [
        facts_line(command, ("duckdb",)),
        "",
        f"Archive: {whole.rows:,} events (the analytics benchmark's archive). Each export "
        f"orders and writes time slices of about {SLICE_ROWS:,} rows "
        f"({SLICE_ROWS * PARQUET_SLICE_SHARE:,.0f} for Parquet) under a DuckDB memory limit "
        f"of {EXPORT_MEMORY_LIMIT}; the ceilings have no limit.",
        "",
        "| measure | rows | runs | median s | spread | rows/s | size | peak RSS "
        "| verify-export s (spread) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in exports:
        if e.target is None:
            target = ""
        else:
            target = f"≥ {e.target:,}/s: " + ("met" if e.rate >= e.target else "**not met**")
        lines.append(
            f"| {e.label} | {e.rows:,} | {len(e.seconds)} | {e.median:.2f} | {e.spread()} | "
            f"{e.rate:,.0f} | {e.bytes / 1e6:,.0f} MB | {max(e.rss_mb):.0f} MB | "
            f"{seconds_cell(e.verify_seconds)} | {target} |"
        )
    for c in [c for fmt in ("csv", "parquet") for c in limits[fmt]]:
        lines.append(
            f"| {c.label} | {c.rows:,} | {len(c.seconds)} | {c.median:.2f} | {c.spread()} | "
            f"{c.rate:,.0f} | - | - | - | |"
        )
    lines += [
        "",
        "| rows/s over rows/s (medians) | CSV | Parquet |",
        "|---|---:|---:|",
    ]
    products = {
        "csv": whole,
        "parquet": next(e for e in exports if e.name == "all.parquet"),
    }
    unordered = {fmt: next(c for c in limits[fmt] if not c.ordered) for fmt in limits}
    ordered = {fmt: next(c for c in limits[fmt] if c.ordered) for fmt in limits}
    for label, top, bottom in (
        ("export / ordered ceiling", products, ordered),
        ("export / unordered ceiling", products, unordered),
        ("ordered ceiling / unordered ceiling", ordered, unordered),
    ):
        lines.append(
            f"| {label} | {ratio(top['csv'], bottom['csv'])} "
            f"| {ratio(top['parquet'], bottom['parquet'])} |"
        )
    peak = max(exports, key=lambda e: max(e.rss_mb))
    tenth = next(e for e in exports if e.name == "tenth.csv")
    lines += [
        "",
        "| target | result (median) | |",
        "|---|---|---|",
    ]
    for fmt, goal in (("CSV", CSV_TARGET), ("Parquet", PARQUET_TARGET)):
        slowest = min((e for e in exports if e.target == goal), key=lambda e: e.rate)
        lines.append(
            f"| {fmt} ≥ {goal:,} rows/s | {slowest.rate:,.0f} ({slowest.label}) | "
            + ("met" if slowest.rate >= goal else "**not met**")
            + " |"
        )
    highest = max(peak.rss_mb)
    lines.append(
        f"| peak RSS ≤ {RSS_TARGET_MB:.0f} MB regardless of size | {highest:.0f} MB "
        f"({peak.label}); CSV of a tenth {max(tenth.rss_mb):.0f} MB vs all "
        f"{max(whole.rss_mb):.0f} MB | "
        + ("met" if highest <= RSS_TARGET_MB else "**not met**")
        + " |"
    )
    return "\n".join(lines)


METHOD = """## Export

Command: `make bench-export` (= `python -m benchmarks.export --events 10000000`);
`make bench-export-quick` runs 200,000 events without writing this file.

Method, all in one run on the same machine and the same data: the analytics
benchmark's cached archive and its analytics copy (refreshed first, not
timed). Each export is the real CLI in its own process (`grantex-archive export
-o PATH --no-refresh ...`): the whole archive as CSV, gzipped CSV, JSON Lines,
Parquet and Parquet partitioned by day, then CSV of the first tenth of the
archive (`--until`) to compare memory with the whole, then one type for one
agent. An export's seconds are its process's wall time: interpreter start-up
and imports, counting the rows by the hour to cut them into time slices,
DuckDB's ordering and writing of each slice under the export's memory limit,
the SHA-256 of the file, the manifest and the rename. rows/s = rows / median
seconds; peak RSS is the process's own `VmHWM`, the highest of the runs. Each
manifest's row count is checked against a count of the same filter on the
copy, and `verify-export` (timed, separately) must accept the whole-archive
CSV and Parquet files.

The ceilings are DuckDB alone in the benchmark's own process (two threads, no
memory limit), writing the same columns of every row in one `COPY`: CSV to
`/dev/null`, Parquet (zstd, the export's row-group size) to a file. Each is
measured twice: unordered, and with the export's own `ORDER BY occurred_at,
id` (the SELECT is the export's, from `queries.export.plan.select_sql`). Only
the `COPY` is timed: no process start-up, no counting, no slices, no hashing,
no manifest. The ratios are the export's rows/s over the ceiling's (medians);
the ordered ceiling over the unordered one is what ordering costs DuckDB
itself.

Every measured side runs `--runs` times (3 by default) in rounds: a round runs
each export in turn, the CSV ceilings right after the CSV export and the
Parquet ceilings right after the Parquet export, so the two sides alternate.
Each row gives the median and the spread (fastest to slowest run)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--runs", type=int, default=3, help="runs of every measured side")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    command = f"python -m benchmarks.export --events {args.events} --runs {args.runs}"
    archive = ensure_archive(args.events, args.seed, False)
    reset_archive(archive)
    db = ["--db", archive.url, "--analytics-dir", str(COPY), "--no-refresh"]
    print("refreshing the analytics copy...", flush=True)
    timed(cli("refresh", "--db", archive.url, "--analytics-dir", str(COPY)))
    OUT.mkdir(parents=True, exist_ok=True)
    exports = exports_to_run(archive.events, archive.spacing_s, busiest_agent(archive.path))
    limits = {fmt: ceilings_for(fmt) for fmt in ("csv", "parquet")}
    after = {"all.csv": limits["csv"], "all.parquet": limits["parquet"]}
    for round_ in range(1, args.runs + 1):
        print(f"round {round_} of {args.runs}: exports (each a CLI process), ceilings", flush=True)
        for export in exports:
            run(export, db)
            for ceiling in after.get(export.name, []):
                measure_ceiling(ceiling)
    table = render(exports, limits, command)
    print()
    print(table)
    if not args.no_write:
        write_section("export", table, METHOD)


if __name__ == "__main__":
    main()
