"""The copy's columns, derived from the archive's schema in ``ingest.schema``.

Each archive table the copy carries keeps its columns, in table order, each
with the DuckDB type that stands for its SQLAlchemy type; event segments add
the derived columns below. A column added to ``ingest/schema.py`` (with its
migration) therefore reaches the copy and its views with no edit here; a
refresh that finds the copy's files without it rebuilds them.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from ingest import schema
from queries.token_kinds import lag_sql

# (name, DuckDB type) pairs, in table order.
Columns = tuple[tuple[str, str], ...]

# SQLAlchemy type to DuckDB type, the first match wins. Every integer is a
# BIGINT: SQLite's are 64-bit whatever the declaration says. DateTime is
# decided by its ``timezone`` flag, in duckdb_type.
_DUCKDB_TYPES: tuple[tuple[type[sa.types.TypeEngine[Any]], str], ...] = (
    (sa.Boolean, "BOOLEAN"),
    (sa.Integer, "BIGINT"),
    (sa.Float, "DOUBLE"),
    (sa.Numeric, "DOUBLE"),
    (sa.Date, "DATE"),
    (sa.String, "VARCHAR"),
)


def duckdb_type(column: sa.Column[Any]) -> str:
    """The DuckDB type the copy stores ``column`` as."""
    kind = column.type
    if isinstance(kind, sa.DateTime):
        return "TIMESTAMPTZ" if kind.timezone else "TIMESTAMP"
    for sa_type, duck in _DUCKDB_TYPES:
        if isinstance(kind, sa_type):
            return duck
    raise TypeError(
        f"{column.table.name}.{column.name}: no DuckDB type for {kind!r} "
        "(add one to queries/copy/columns.py)"
    )


def copy_columns(table: sa.Table) -> Columns:
    """Every column of an archive table, in order, with its DuckDB type."""
    return tuple((column.name, duckdb_type(column)) for column in table.columns)


EVENT_COLUMNS: Columns = copy_columns(schema.events)

# Written beside the archive's columns so that grouping by period reads a
# column instead of computing one per row.
DERIVED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("day", "DATE", "CAST(occurred_at AS DATE)"),
    ("week", "DATE", "CAST(date_trunc('week', occurred_at) AS DATE)"),
    ("month", "DATE", "CAST(date_trunc('month', occurred_at) AS DATE)"),
    # Read once here so that nothing later has to decompress every payload.
    (
        "revoked_grants",
        "VARCHAR[]",
        "CASE WHEN type = 'anomaly.auto_revoked' "
        "THEN TRY_CAST(json_extract(payload, '$.data.revokedGrants') AS VARCHAR[]) END",
    ),
    # token.issued: token ULID time minus grant ULID time (queries.token_kinds).
    ("token_lag_ms", "BIGINT", f"CASE WHEN type = 'token.issued' THEN {lag_sql()} END"),
    (
        "parent_grant_id",
        "VARCHAR",
        "CASE WHEN type = 'grant.created' "
        "THEN json_extract_string(payload, '$.data.parentGrantId') END",
    ),
)
SEGMENT_COLUMNS: Columns = EVENT_COLUMNS + tuple((name, kind) for name, kind, _ in DERIVED_COLUMNS)

# The other archive tables the copy carries whole, each as a view of the same
# name (ingest_connections for the coverage of the stream).
TABLE_COLUMNS: dict[str, Columns] = {
    table.name: copy_columns(table)
    for table in (schema.rejected_events, schema.ingest_runs, schema.ingest_connections)
}

TIME_TYPES = frozenset({"TIMESTAMPTZ"})
