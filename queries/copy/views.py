"""The views a session or ``views.sql`` defines over one manifest's files.

``events``, ``grants``, ``revocations``, ``tokens``, ``rejected_events``,
``ingest_runs``, ``ingest_connections``, ``reconcile_runs``,
``reconcile_findings`` and ``chain_links`` (``n``, ``kind``, ``count``,
``created_at`` only): the events view is the segments with every archive
column and the derived ones; the grants view presents the grant state with
each grant's first revocation (from the state and the revocation facts, see
``revocations``, else from reconciliation's findings) and its status, and
the service's status where reconciliation observed it; the revocations view
is the revoked grants of it; the tokens view is every ``token.issued`` with
its kind (``queries.token_kinds``); the others are the archive tables of the
same names.
"""

from __future__ import annotations

from pathlib import Path

from queries.token_kinds import kind_sql

from .columns import TABLE_COLUMNS
from .grant_state import current_state_sql, with_reconciled_sql
from .manifest import Locate, Manifest
from .revocations import (
    RECONCILED_ACTOR,
    RECONCILED_GRANTS,
    RECONCILED_VIA,
    UNREVOKED_ACTOR,
    status_sql,
)
from .sql import empty_select, events_from, parquet

# Which candidate is the grant's first revocation: the direct one wins a tie
# in time; the routed one already is the least of the others when the facts
# name the grant (``revocations.routed_sql``), else the anomaly one is.
# A revocation only reconciliation knows of counts when no event revoked the grant.
_WINNER = """CASE WHEN revoked_event_at = revoked_at THEN 'direct'
            WHEN routed_at = revoked_at THEN 'routed'
            WHEN auto_revoked_at = revoked_at THEN 'anomaly'
            WHEN reconciled_revoked_at = revoked_at THEN 'reconciled' END"""


def grants_view_sql(states: str) -> str:
    """The grants view over the grant state ``states`` and the ``reconcile_findings`` view."""
    return f"""
SELECT grant_id,
    source,
    agent_id,
    principal_id,
    created_at,
    first_token_at,
    last_token_at,
    tokens_issued,
    agentless_tokens,
    agentless_exchange,
    agentless_refresh,
    agentless_first_at,
    agentless_last_at,
    revoked_at,
    CASE winner WHEN 'direct' THEN coalesce(revoked_event_by, '{UNREVOKED_ACTOR}')
        WHEN 'anomaly' THEN 'system' WHEN 'reconciled' THEN '{RECONCILED_ACTOR}'
        ELSE routed_actor END AS revoked_by,
    CASE winner WHEN 'direct' THEN 'direct' WHEN 'anomaly' THEN 'anomaly'
        WHEN 'reconciled' THEN '{RECONCILED_VIA}' ELSE routed_via END AS revoked_via,
    CASE winner WHEN 'direct' THEN revoked_event_id WHEN 'anomaly' THEN auto_event_id
        WHEN 'routed' THEN routed_event_id END AS revoked_event_id,
    parent_grant_id,
    delegation_depth,
    expires_at,
    {status_sql("revoked_at", "expires_at")} AS status,
    service_status,
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
FROM (
    SELECT *, {_WINNER} AS winner
    FROM (
        SELECT * REPLACE (
                CASE WHEN parent_grant_id IS NOT NULL THEN delegation_depth
                    WHEN created_at IS NOT NULL OR bundle_created_at IS NOT NULL THEN 0
                    END AS delegation_depth,
                coalesce(created_at, bundle_created_at) AS created_at),
            coalesce(created_agent_id, bundle_agent_id, any_agent_id, auto_agent_id,
                service_agent_id) AS agent_id,
            coalesce(created_principal_id, bundle_principal_id, any_principal_id,
                service_principal_id) AS principal_id,
            coalesce(least(revoked_event_at, auto_revoked_at, routed_at), reconciled_revoked_at)
                AS revoked_at
        FROM ({with_reconciled_sql(states, RECONCILED_GRANTS)}) s
    ) state
) g
"""


REVOCATIONS_VIEW = """
SELECT grant_id, revoked_at, revoked_by AS actor, revoked_via AS via, revoked_event_id AS event_id
FROM grants WHERE revoked_at IS NOT NULL
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
    {kind_sql("e.method", "e.token_lag_ms", "g.parent_grant_id IS NOT NULL")} AS kind
FROM events e
LEFT JOIN grants g USING (grant_id)
WHERE e.type = 'token.issued'
"""


def view_statements(
    directory: Path, manifest: Manifest | None, locate: Locate | None = None
) -> list[str]:
    """CREATE VIEW statements for every view the module docstring names.

    ``locate`` says where each file is read from (default: its path in ``directory``).
    """
    directory = directory.resolve()
    if locate is None:
        locate = directory.joinpath
    if manifest is None:
        manifest = Manifest()
    files = [locate(s.file) for s in manifest.segments]
    states = current_state_sql(locate, manifest)
    # The archive tables first: the grants view reads reconcile_findings.
    statements = []
    for table, columns in TABLE_COLUMNS.items():
        known = manifest.tables.get(table)
        source = (
            f"SELECT * FROM {parquet(locate(known['file']))}" if known else empty_select(columns)
        )
        statements.append(f"CREATE OR REPLACE VIEW {table} AS {source}")
    return [
        "CREATE OR REPLACE VIEW events AS " + EVENTS_VIEW.format(events=events_from(files)).strip(),
        *statements,
        "CREATE OR REPLACE VIEW grants AS " + grants_view_sql(states).strip(),
        "CREATE OR REPLACE VIEW revocations AS " + REVOCATIONS_VIEW.strip(),
        "CREATE OR REPLACE VIEW tokens AS " + TOKENS_VIEW.strip(),
    ]


def views_sql(directory: Path, manifest: Manifest) -> str:
    """The text of ``views.sql``: the views for ``manifest``, runnable in any DuckDB session."""
    header = (
        "-- The grantex-archive analytics views, for the copy as of "
        f"{manifest.refreshed_at}.\n"
        "-- Open in DuckDB with: duckdb -init views.sql   (or run this file in any session)\n"
        "SET TimeZone = 'UTC';\n"
    )
    return header + "".join(f"{s};\n" for s in view_statements(directory, manifest))
