"""Which rows an export writes, in which form and order, cut into time slices.

An export is written one time slice at a time: each slice's rows are ordered
by occurred_at and id, and the slices follow each other in time, so DuckDB
never sorts more than about SLICE_ROWS rows at once and memory stays bounded
whatever the export's size.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from .columns import ALL_COLUMNS, TEXT_COLUMNS
from .spec import PARTITIONS, ExportSpec

SLICE_ROWS = 200_000
# ... and about SLICE_BYTES of payload, whichever comes first (wide events).
SLICE_BYTES = 64 << 20
# Parquet slices are this share of those: pyarrow holds a row group in memory
# beside DuckDB's sorted slice.
PARQUET_SLICE_SHARE = 0.5
# Characters that make a spreadsheet treat a cell as a formula.
FORMULA_START = "^[=+\\-@\t\r]"

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Slice:
    """Rows with occurred_at in [since, until); None is no bound (first and last slice)."""

    since: datetime | None
    until: datetime | None
    rows: int


@dataclass
class Plan:
    rows: int
    max_seq: int | None
    newest: datetime | None
    slices: list[Slice]

    def parts(self) -> list[Slice | None]:
        """The slices to write in turn; one None (every row, that is none) when empty."""
        return list(self.slices) or [None]


def plan_export(
    conn: duckdb.DuckDBPyConnection,
    where: str,
    params: dict[str, Any],
    slice_rows: int | None = None,
    share: float = 1.0,
) -> Plan:
    """Count what ``where`` selects, and cut it into time slices of about ``slice_rows``.

    ``share`` scales both the row and the payload bound (for Parquet).
    """
    limit = max(1, int((slice_rows or SLICE_ROWS) * share))
    max_bytes = SLICE_BYTES * share
    hours = conn.execute(
        "SELECT date_trunc('hour', occurred_at) AS hour, count(*), max(seq), max(occurred_at), "
        f"sum(strlen(payload)) FROM events WHERE {where} GROUP BY hour ORDER BY hour",
        params,
    ).fetchall()
    starts: list[tuple[datetime, int, int]] = []  # (first hour, rows, bytes) of each slice
    for hour, count, _, _, size in hours:
        if not starts or (
            starts[-1][1] and (starts[-1][1] + count > limit or starts[-1][2] + size > max_bytes)
        ):
            starts.append((hour, 0, 0))
        first, rows, total = starts[-1]
        starts[-1] = (first, rows + int(count), total + int(size))
    slices = [
        Slice(
            since=None if i == 0 else first,
            until=starts[i + 1][0] if i + 1 < len(starts) else None,
            rows=rows,
        )
        for i, (first, rows, _) in enumerate(starts)
    ]
    return Plan(
        rows=sum(int(h[1]) for h in hours),
        max_seq=max((h[2] for h in hours), default=None),
        newest=max((h[3] for h in hours), default=None),
        slices=slices,
    )


def _expression(spec: ExportSpec, name: str) -> str:
    """The SQL for column ``name`` in the format ``spec`` writes."""
    text, typed = ALL_COLUMNS[name]
    expr = typed if spec.fmt == "parquet" else text
    if spec.fmt == "jsonl" and spec.columns and name == "payload":
        expr = "json(payload)"
    if spec.fmt == "jsonl" and spec.columns and name == "data":
        expr = "json_extract(payload, '$.data')"
    if spec.safe_formulas and name in TEXT_COLUMNS:
        expr = (
            f"CASE WHEN regexp_matches({expr}, '{FORMULA_START}') "
            f"THEN '''' || {expr} ELSE {expr} END"
        )
    return expr


def select_sql(spec: ExportSpec, where: str) -> str:
    """The rows to export in their output form, ordered by occurred_at, then id."""
    exprs = [f"{_expression(spec, name)} AS {name}" for name in spec.chosen_columns()]
    if spec.fmt == "jsonl" and not spec.columns:
        # One envelope per line as archived; a payload that spanned lines is compacted.
        exprs = [
            "CASE WHEN contains(payload, chr(10)) OR contains(payload, chr(13)) "
            "THEN CAST(json(payload) AS VARCHAR) ELSE payload END AS payload"
        ]
    if spec.partition_by:
        part = PARTITIONS[spec.partition_by]
        unit = "%Y-%m-%d" if spec.partition_by == "day" else "%Y-%m"
        exprs.append(f"strftime(occurred_at, '{unit}') AS {part}")
    # Ordered by the stored values: the text formats shadow occurred_at with a string.
    return (
        f"SELECT {', '.join(exprs)} FROM events WHERE {where} "
        "ORDER BY events.occurred_at, events.id"
    )


def slice_query(
    spec: ExportSpec, where: str, params: dict[str, Any], part: Slice | None
) -> tuple[str, dict[str, Any]]:
    """The SELECT for one slice (all rows for None) and its parameters."""
    bounds = [where]
    bound = dict(params)
    if part is not None and part.since is not None:
        bounds.append("occurred_at >= $slice_since")
        bound["slice_since"] = part.since
    if part is not None and part.until is not None:
        bounds.append("occurred_at < $slice_until")
        bound["slice_until"] = part.until
    return select_sql(spec, " AND ".join(bounds)), bound


def check_stop(stop: threading.Event | None) -> None:
    """Raise KeyboardInterrupt once ``stop`` is set.

    Between the steps DuckDB does not run (Python's and pyarrow's), a stop
    asked for by ``ctrl_c_stops`` becomes the KeyboardInterrupt it stands for.
    """
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt


def report_slice(
    done: int,
    part: Slice | None,
    plan: Plan,
    progress: ProgressFn | None,
    stop: threading.Event | None,
) -> int:
    """After a slice: the rows done so far, reported; a stop asked for meanwhile raised."""
    done += part.rows if part is not None else 0
    check_stop(stop)
    if progress is not None:
        progress(done, plan.rows)
    return done
