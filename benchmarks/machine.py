"""The machine a benchmark ran on, read from the machine itself.

Every section of BENCHMARKS.md starts with :func:`facts_line`: the date, the
CPU model and the cores this process may use, the memory, and the versions of
Python and of each engine the benchmark measured. Nothing here is written in
by hand: a figure that cannot be read is shown as ``unknown``.
"""

from __future__ import annotations

import os
import platform
import sqlite3
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

UNKNOWN = "unknown"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.partition(":")[2].split())
    except OSError:
        pass
    return platform.processor() or UNKNOWN


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 0


def memory_gib() -> str:
    """Total memory from ``/proc/meminfo``, in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return UNKNOWN


def duckdb_version() -> str:
    try:
        import duckdb
    except ImportError:
        return UNKNOWN
    return str(duckdb.__version__)


def postgres_version(url: str) -> str:
    """The server's own ``server_version`` (as PostgreSQL reports it), or ``unknown``."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                return str(conn.exec_driver_sql("SHOW server_version").scalar())
        finally:
            engine.dispose()
    except Exception:
        return UNKNOWN


def facts(engines: Iterable[str] = ("sqlite",), pg_url: str | None = None) -> list[str]:
    """The machine's facts, each ``name value``; ``engines`` picks the versions shown."""
    out = [
        f"{usable_cores()} cores ({cpu_model()})",
        f"{memory_gib()} memory",
        f"Python {platform.python_version()}",
    ]
    wanted = set(engines)
    if "sqlite" in wanted:
        out.append(f"SQLite {sqlite3.sqlite_version}")
    if "duckdb" in wanted:
        out.append(f"DuckDB {duckdb_version()}")
    if "postgresql" in wanted and pg_url is not None:
        out.append(f"PostgreSQL {postgres_version(pg_url)}")
    return out


def facts_line(
    command: str, engines: Iterable[str] = ("sqlite",), pg_url: str | None = None
) -> str:
    """The first line of a results block: when, on what, by which command."""
    when = f"Run on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    return " · ".join([when, *facts(engines, pg_url), f"`{command}`"])
