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


def copy_columns(table: sa.Table, names: tuple[str, ...] | None = None) -> Columns:
    """Every column of an archive table (or those ``names``), in order, with its DuckDB type."""
    return tuple(
        (column.name, duckdb_type(column))
        for column in table.columns
        if names is None or column.name in names
    )


EVENT_COLUMNS: Columns = copy_columns(schema.events)


def _data(field: str) -> str:
    """The text of ``data.<field>`` in the envelope (NULL when absent or JSON null)."""
    return f"json_extract_string(payload, '$.data.{field}')"


def _is_true(field: str) -> str:
    """``data.<field>`` is the JSON value ``true``."""
    return (
        f"coalesce(json_type(payload, '$.data.{field}') = 'BOOLEAN' "
        f"AND {_data(field)} = 'true', false)"
    )


def _truthy(field: str) -> str:
    """``data.<field>`` is truthy as the service's JavaScript reads it.

    false, 0, "", null and absence are falsy; any other value is truthy.
    """
    return (
        f"coalesce(CASE json_type(payload, '$.data.{field}') "
        f"WHEN 'BOOLEAN' THEN {_data(field)} = 'true' "
        f"WHEN 'VARCHAR' THEN {_data(field)} <> '' "
        "WHEN 'ARRAY' THEN true WHEN 'OBJECT' THEN true WHEN 'NULL' THEN false "
        f"ELSE TRY_CAST({_data(field)} AS DOUBLE) <> 0 END, false)"
    )


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
    # What delegation, expiry and the revocation paths need (see
    # queries/copy/revocations.py), each read only from the types that carry it.
    (
        "parent_grant_id",
        "VARCHAR",
        f"CASE WHEN type = 'grant.created' THEN {_data('parentGrantId')} END",
    ),
    (
        "delegation_depth",
        "BIGINT",
        "CASE WHEN type = 'grant.created' "
        "AND json_type(payload, '$.data.delegationDepth') IN ('UBIGINT', 'BIGINT') "
        f"THEN TRY_CAST({_data('delegationDepth')} AS BIGINT) END",
    ),
    (
        "expires_at",
        "TIMESTAMPTZ",
        f"CASE WHEN type = 'grant.created' THEN TRY_CAST({_data('expiresAt')} AS TIMESTAMPTZ) END",
    ),
    (
        "bundle_id",
        "VARCHAR",
        f"CASE WHEN starts_with(type, 'consent_bundle.') THEN {_data('bundleId')} END",
    ),
    (
        "record_id",
        "VARCHAR",
        f"CASE WHEN starts_with(type, 'dpdp.consent.') THEN {_data('recordId')} END",
    ),
    (
        "data_principal_id",
        "VARCHAR",
        f"CASE WHEN starts_with(type, 'dpdp.') THEN {_data('dataPrincipalId')} END",
    ),
    ("cascade", "BOOLEAN", f"CASE WHEN type = 'grant.revoked' THEN {_is_true('cascade')} END"),
    (
        "revokes_grant",
        "BOOLEAN",
        "CASE type "
        f"WHEN 'consent_bundle.revoked' THEN {_truthy('revokeGrant')} "
        f"WHEN 'dpdp.consent.withdrawn' THEN {_is_true('grantRevoked')} END",
    ),
)
SEGMENT_COLUMNS: Columns = EVENT_COLUMNS + tuple((name, kind) for name, kind, _ in DERIVED_COLUMNS)

# The other archive tables the copy carries, each as a view of the same name
# (ingest_connections for the coverage of the stream). chain_links without its
# digests, prev, keys and hash: the chain report counts links and rows, and the
# copy is no place to verify them (that is verify-archive's, on the archive).
TABLE_COLUMNS: dict[str, Columns] = {
    **{
        table.name: copy_columns(table)
        for table in (
            schema.rejected_events,
            schema.ingest_runs,
            schema.ingest_connections,
            schema.reconcile_runs,
            schema.reconcile_findings,
        )
    },
    "chain_links": copy_columns(schema.chain_links, ("n", "kind", "count", "created_at")),
}

TIME_TYPES = frozenset({"TIMESTAMPTZ"})
