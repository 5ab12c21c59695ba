"""The views a session or ``views.sql`` defines over one manifest's files.

``events``, ``grants``, ``rejected_events`` and ``ingest_runs``: the events
view is the segments with every archive column and the derived ones, the
grants view presents the grant state, and the other two are the archive
tables of the same names.
"""

from __future__ import annotations

from pathlib import Path

from queries.token_kinds import kind_sql

from .columns import TABLE_COLUMNS
from .grant_state import current_state_sql
from .manifest import Locate, Manifest
from .sql import empty_select, events_from, parquet

GRANTS_VIEW = """
SELECT grant_id,
    source,
    coalesce(created_agent_id, any_agent_id, auto_agent_id) AS agent_id,
    coalesce(created_principal_id, any_principal_id) AS principal_id,
    created_at,
    first_token_at,
    last_token_at,
    tokens_issued,
    agentless_tokens,
    agentless_exchange,
    agentless_refresh,
    agentless_first_at,
    agentless_last_at,
    CASE WHEN revoked_event_at IS NULL THEN auto_revoked_at
         WHEN auto_revoked_at IS NULL THEN revoked_event_at
         ELSE least(revoked_event_at, auto_revoked_at) END AS revoked_at,
    CASE WHEN revoked_by_field IS NOT NULL THEN revoked_by_field
         WHEN auto_revoked_at IS NOT NULL THEN 'system'
         WHEN revoked_event_at IS NOT NULL THEN 'unknown' END AS revoked_by,
    budget_50_at,
    budget_80_at,
    exhausted_at,
    initial_budget,
    first_budget_at,
    last_budget_at,
    budget_times,
    first_event_at,
    last_event_at,
    events
FROM ({states}) s
"""

EVENTS_VIEW = "SELECT * FROM {events}"

# One row per token.issued, with the agent from its grant when the event
# names none, and its kind by the rule in queries.token_kinds.
TOKENS_VIEW = f"""
SELECT e.id AS event_id,
    e.token_id,
    e.grant_id,
    e.source,
    coalesce(e.agent_id, g.agent_id) AS agent_id,
    coalesce(e.principal_id, g.principal_id) AS principal_id,
    e.occurred_at AS issued_at,
    e.method,
    e.token_lag_ms,
    {kind_sql("e.method", "e.token_lag_ms", "d.grant_id IS NOT NULL")} AS kind
FROM events e
LEFT JOIN grants g USING (grant_id)
LEFT JOIN (
    SELECT DISTINCT grant_id FROM events
    WHERE type = 'grant.created' AND parent_grant_id IS NOT NULL
) d USING (grant_id)
WHERE e.type = 'token.issued'
"""


def view_statements(
    directory: Path, manifest: Manifest | None, locate: Locate | None = None
) -> list[str]:
    """CREATE VIEW statements for events, grants, rejected_events and ingest_runs.

    ``locate`` says where each file is read from (default: its path in ``directory``).
    """
    directory = directory.resolve()
    if locate is None:
        locate = directory.joinpath
    if manifest is None:
        manifest = Manifest()
    files = [locate(s.file) for s in manifest.segments]
    statements = [
        "CREATE OR REPLACE VIEW events AS " + EVENTS_VIEW.format(events=events_from(files)).strip(),
        "CREATE OR REPLACE VIEW grants AS "
        + GRANTS_VIEW.format(states=current_state_sql(locate, manifest)).strip(),
        "CREATE OR REPLACE VIEW tokens AS " + TOKENS_VIEW.strip(),
    ]
    for table, columns in TABLE_COLUMNS.items():
        known = manifest.tables.get(table)
        source = (
            f"SELECT * FROM {parquet(locate(known['file']))}" if known else empty_select(columns)
        )
        statements.append(f"CREATE OR REPLACE VIEW {table} AS {source}")
    return statements


def views_sql(directory: Path, manifest: Manifest) -> str:
    """The text of ``views.sql``: the views for ``manifest``, runnable in any DuckDB session."""
    header = (
        "-- The grantex-archive analytics views, for the copy as of "
        f"{manifest.refreshed_at}.\n"
        "-- Open in DuckDB with: duckdb -init views.sql   (or run this file in any session)\n"
        "SET TimeZone = 'UTC';\n"
    )
    return header + "".join(f"{s};\n" for s in view_statements(directory, manifest))
