"""The columns an export can hold, taken from the archive's schema (``ingest.schema``).

Every column of the ``events`` table can be exported, plus ``data`` (the
event's data as compact JSON). The default columns are the table's, in the
documented order, without the archive's bookkeeping (``seq``,
``received_at``) and the raw envelope (``payload``), which ``--columns``
adds. A column added to the schema is exportable, and in the defaults,
without an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa

from ingest.schema import events


def timestamp_text(expr: str) -> str:
    """SQL for the timestamp ``expr`` as text, as ``ingest.timestamps.format_timestamp`` writes it.

    ISO 8601 UTC with ``Z``: milliseconds (as the producer sends them),
    microseconds when they are not whole milliseconds. DuckDB formats a
    TIMESTAMPTZ in the session's TimeZone, which ``queries.session`` sets to
    UTC, and a TIMESTAMP as it is (taken as UTC, as format_timestamp takes a
    naive value). Each format is a constant: DuckDB's strftime of a TIMESTAMP
    accepts no other. This is the one place SQL formats a time; a test
    compares it with format_timestamp.
    """
    return (
        f"CASE WHEN microsecond({expr}) % 1000 = 0 "
        f"THEN strftime({expr}, '%Y-%m-%dT%H:%M:%S.%gZ') "
        f"ELSE strftime({expr}, '%Y-%m-%dT%H:%M:%S.%fZ') END"
    )


# The default columns begin with what an event is, when, and from where.
LEADING = ("id", "type", "occurred_at", "source")
# Archive columns an export holds only when --columns names them.
ON_REQUEST = ("seq", "received_at", "payload")
# ``data``: the event's data as compact JSON (text in every format).
DATA = "CAST(json_extract(payload, '$.data') AS VARCHAR)"


def _expressions(column: sa.Column[object]) -> tuple[str, str]:
    """(expression for the text formats, expression for Parquet) of an archive column."""
    if isinstance(column.type, sa.DateTime):
        return timestamp_text(column.name), column.name
    return column.name, column.name


ARCHIVE_COLUMNS: dict[str, tuple[str, str]] = {c.name: _expressions(c) for c in events.columns}

# name -> (expression for text formats, expression for Parquet), in the
# documented column order.
COLUMNS: dict[str, tuple[str, str]] = {
    **{name: ARCHIVE_COLUMNS[name] for name in LEADING},
    **{
        name: expressions
        for name, expressions in ARCHIVE_COLUMNS.items()
        if name not in LEADING and name not in ON_REQUEST
    },
    "data": (DATA, DATA),
}
DEFAULT_COLUMNS = tuple(COLUMNS)
# Further archive columns --columns may ask for, in the table's order.
EXTRA_COLUMNS: dict[str, tuple[str, str]] = {
    name: expressions for name, expressions in ARCHIVE_COLUMNS.items() if name in ON_REQUEST
}
ALL_COLUMNS = {**COLUMNS, **EXTRA_COLUMNS}
# Columns holding text, which --safe-formulas guards.
TEXT_COLUMNS = frozenset(
    {c.name for c in events.columns if isinstance(c.type, sa.String)} | {"data"}
)
