"""The grants table: one row of mergeable state per grant, and the SQL that builds it.

Each state column is a min, max, sum or a value paired with the time that
picks it, so the state of old rows and of new rows combine without
re-reading the old: a refresh computes the state of the grants its new rows
touch, merges it with what the copy held for them (the delta file), and the
``grants`` view reads the base overridden by the delta.
"""

from __future__ import annotations

from .manifest import Locate, Manifest
from .sql import empty_select, parquet

_BUDGET = "type IN ('budget.threshold', 'budget.exhausted')"
# A consent-bundle grant gets no grant.created: its bundle's
# consent_bundle.created is its creation (kept apart, so that a grant.created
# wins whatever the times and however refreshes split the events).
_BUNDLE = "type = 'consent_bundle.created'"

# token.issued without agentId (documented envelopes): the agent comes from
# the grant, so the state keeps their counts for reports to use without a join.
_AGENTLESS = "type = 'token.issued' AND agent_id IS NULL"


def _first(at: str, event_id: str) -> str:
    """The order that picks a grant's first revocation event: its time, then its id.

    The id breaks ties, so the pick does not depend on how refreshes split the events.
    """
    return f"{{'at': {at}, 'id': {event_id}}}"


_FIRST = _first("occurred_at", "id")

# What the revocation facts say of a grant (``revocations.routed_sql``): not
# merged like the rest but attached afresh by every refresh, to the delta rows
# of the grants the facts name; NULL everywhere else (the base never has them).
ROUTED_STATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("routed_at", "TIMESTAMPTZ"),
    ("routed_event_id", "VARCHAR"),
    ("routed_actor", "VARCHAR"),
    ("routed_via", "VARCHAR"),
    ("parent_grant_id", "VARCHAR"),
    ("delegation_depth", "BIGINT"),
)
_NO_ROUTE = ",\n".join(f"    CAST(NULL AS {kind}) AS {name}" for name, kind in ROUTED_STATE_COLUMNS)

GRANT_STATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("grant_id", "VARCHAR"),
    ("source", "VARCHAR"),
    ("created_at", "TIMESTAMPTZ"),
    ("created_agent_id", "VARCHAR"),
    ("created_principal_id", "VARCHAR"),
    ("bundle_created_at", "TIMESTAMPTZ"),
    ("bundle_agent_id", "VARCHAR"),
    ("bundle_principal_id", "VARCHAR"),
    ("any_agent_id", "VARCHAR"),
    ("any_principal_id", "VARCHAR"),
    ("first_token_at", "TIMESTAMPTZ"),
    ("last_token_at", "TIMESTAMPTZ"),
    ("tokens_issued", "BIGINT"),
    ("agentless_tokens", "BIGINT"),
    ("agentless_exchange", "BIGINT"),
    ("agentless_refresh", "BIGINT"),
    ("agentless_first_at", "TIMESTAMPTZ"),
    ("agentless_last_at", "TIMESTAMPTZ"),
    ("revoked_event_at", "TIMESTAMPTZ"),
    ("revoked_event_id", "VARCHAR"),
    ("revoked_event_by", "VARCHAR"),
    ("auto_revoked_at", "TIMESTAMPTZ"),
    ("auto_event_id", "VARCHAR"),
    ("auto_agent_id", "VARCHAR"),
    ("expires_at", "TIMESTAMPTZ"),
    ("first_budget_at", "TIMESTAMPTZ"),
    ("last_budget_at", "TIMESTAMPTZ"),
    ("budget_times", "TIMESTAMPTZ[]"),
    ("budget_50_at", "TIMESTAMPTZ"),
    ("budget_80_at", "TIMESTAMPTZ"),
    ("exhausted_at", "TIMESTAMPTZ"),
    ("initial_budget", "DOUBLE"),
    ("first_event_at", "TIMESTAMPTZ"),
    ("last_event_at", "TIMESTAMPTZ"),
    ("events", "BIGINT"),
    *ROUTED_STATE_COLUMNS,
)


def _direct_state(events: str) -> str:
    """State from the events that name a grant by ``grant_id``, one row per grant."""
    return f"""
    SELECT grant_id,
        min(source) AS source,
        min(occurred_at) FILTER (WHERE type = 'grant.created') AS created_at,
        arg_min(agent_id, occurred_at) FILTER (WHERE type = 'grant.created') AS created_agent_id,
        arg_min(principal_id, occurred_at) FILTER (WHERE type = 'grant.created')
            AS created_principal_id,
        min(occurred_at) FILTER (WHERE {_BUNDLE}) AS bundle_created_at,
        arg_min(agent_id, occurred_at) FILTER (WHERE {_BUNDLE}) AS bundle_agent_id,
        arg_min(principal_id, occurred_at) FILTER (WHERE {_BUNDLE}) AS bundle_principal_id,
        min(agent_id) AS any_agent_id,
        min(principal_id) AS any_principal_id,
        min(occurred_at) FILTER (WHERE type = 'token.issued') AS first_token_at,
        max(occurred_at) FILTER (WHERE type = 'token.issued') AS last_token_at,
        count(*) FILTER (WHERE type = 'token.issued') AS tokens_issued,
        count(*) FILTER (WHERE {_AGENTLESS}) AS agentless_tokens,
        count(*) FILTER (WHERE {_AGENTLESS} AND method = 'exchange') AS agentless_exchange,
        count(*) FILTER (WHERE {_AGENTLESS} AND method = 'refresh') AS agentless_refresh,
        min(occurred_at) FILTER (WHERE {_AGENTLESS}) AS agentless_first_at,
        max(occurred_at) FILTER (WHERE {_AGENTLESS}) AS agentless_last_at,
        min(occurred_at) FILTER (WHERE type = 'grant.revoked') AS revoked_event_at,
        arg_min(id, {_FIRST}) FILTER (WHERE type = 'grant.revoked') AS revoked_event_id,
        arg_min_null(revoked_by, {_FIRST}) FILTER (WHERE type = 'grant.revoked')
            AS revoked_event_by,
        CAST(NULL AS TIMESTAMPTZ) AS auto_revoked_at,
        CAST(NULL AS VARCHAR) AS auto_event_id,
        CAST(NULL AS VARCHAR) AS auto_agent_id,
        min(expires_at) FILTER (WHERE type = 'grant.created') AS expires_at,
        min(occurred_at) FILTER (WHERE {_BUDGET}) AS first_budget_at,
        max(occurred_at) FILTER (WHERE {_BUDGET}) AS last_budget_at,
        list(occurred_at ORDER BY occurred_at) FILTER (WHERE {_BUDGET}) AS budget_times,
        min(occurred_at) FILTER (WHERE type = 'budget.exhausted'
            OR (type = 'budget.threshold' AND percentage >= 50)) AS budget_50_at,
        min(occurred_at) FILTER (WHERE type = 'budget.exhausted'
            OR (type = 'budget.threshold' AND percentage >= 80)) AS budget_80_at,
        min(occurred_at) FILTER (WHERE type = 'budget.exhausted') AS exhausted_at,
        max(initial) AS initial_budget,
        min(occurred_at) AS first_event_at,
        max(occurred_at) AS last_event_at,
        count(*) AS events,
    {_NO_ROUTE}
    FROM {events} WHERE grant_id IS NOT NULL
    GROUP BY grant_id"""


# What an anomaly.auto_revoked listing says about each grant it lists; every
# other state column is empty there (NULL, or 0 for a count).
_AUTO_STATE = {
    "grant_id": "grant_id",
    "source": "min(source)",
    "auto_revoked_at": "min(occurred_at)",
    "auto_event_id": f"arg_min(id, {_FIRST})",
    "auto_agent_id": "arg_min(agent_id, occurred_at)",
    "first_event_at": "min(occurred_at)",
    "last_event_at": "max(occurred_at)",
}


def _auto_state() -> str:
    """State from the grants auto-revocations list (the CTE ``listed``), one row per grant."""
    parts = []
    for name, kind in GRANT_STATE_COLUMNS:
        expr = _AUTO_STATE.get(name)
        if expr is None:
            expr = "CAST(0 AS BIGINT)" if kind == "BIGINT" else f"CAST(NULL AS {kind})"
        parts.append(name if expr == name else f"{expr} AS {name}")
    columns = ",\n        ".join(parts)
    return f"""
    SELECT {columns}
    FROM listed WHERE grant_id IS NOT NULL
    GROUP BY grant_id"""


def grant_state_sql(events: str) -> str:
    """Grant state from the events in ``events`` (a table expression)."""
    # ``events`` is named twice rather than put in a CTE: DuckDB would
    # materialise a CTE used twice, every row of it.
    return f"""
WITH direct AS ({_direct_state(events)}
),
listed AS (
    SELECT unnest(revoked_grants) AS grant_id, occurred_at, id, source, agent_id
    FROM {events} WHERE type = 'anomaly.auto_revoked'
),
auto AS ({_auto_state()}
)
-- A join rather than a second GROUP BY: only the few auto-revoked grants need merging.
SELECT d.* REPLACE (
        least(d.source, a.source) AS source,
        a.auto_revoked_at AS auto_revoked_at,
        a.auto_event_id AS auto_event_id,
        a.auto_agent_id AS auto_agent_id,
        least(d.first_event_at, a.first_event_at) AS first_event_at,
        greatest(d.last_event_at, a.last_event_at) AS last_event_at)
FROM direct d LEFT JOIN auto a USING (grant_id)
UNION ALL BY NAME
SELECT a.* FROM auto a ANTI JOIN direct d USING (grant_id)
"""


def combine_sql(states: str) -> str:
    """Fold several state rows per grant into one."""
    return f"""
SELECT grant_id,
    min(source) AS source,
    min(created_at) AS created_at,
    arg_min(created_agent_id, created_at) AS created_agent_id,
    arg_min(created_principal_id, created_at) AS created_principal_id,
    min(bundle_created_at) AS bundle_created_at,
    arg_min(bundle_agent_id, bundle_created_at) AS bundle_agent_id,
    arg_min(bundle_principal_id, bundle_created_at) AS bundle_principal_id,
    min(any_agent_id) AS any_agent_id,
    min(any_principal_id) AS any_principal_id,
    min(first_token_at) AS first_token_at,
    max(last_token_at) AS last_token_at,
    CAST(sum(tokens_issued) AS BIGINT) AS tokens_issued,
    CAST(sum(agentless_tokens) AS BIGINT) AS agentless_tokens,
    CAST(sum(agentless_exchange) AS BIGINT) AS agentless_exchange,
    CAST(sum(agentless_refresh) AS BIGINT) AS agentless_refresh,
    min(agentless_first_at) AS agentless_first_at,
    max(agentless_last_at) AS agentless_last_at,
    min(revoked_event_at) AS revoked_event_at,
    arg_min(revoked_event_id, {_first("revoked_event_at", "revoked_event_id")})
        AS revoked_event_id,
    arg_min_null(revoked_event_by, {_first("revoked_event_at", "revoked_event_id")})
        FILTER (WHERE revoked_event_at IS NOT NULL) AS revoked_event_by,
    min(auto_revoked_at) AS auto_revoked_at,
    arg_min(auto_event_id, {_first("auto_revoked_at", "auto_event_id")}) AS auto_event_id,
    arg_min(auto_agent_id, auto_revoked_at) AS auto_agent_id,
    min(expires_at) AS expires_at,
    min(first_budget_at) AS first_budget_at,
    max(last_budget_at) AS last_budget_at,
    list_sort(flatten(list(budget_times) FILTER (WHERE budget_times IS NOT NULL)))
        AS budget_times,
    min(budget_50_at) AS budget_50_at,
    min(budget_80_at) AS budget_80_at,
    min(exhausted_at) AS exhausted_at,
    max(initial_budget) AS initial_budget,
    min(first_event_at) AS first_event_at,
    max(last_event_at) AS last_event_at,
    CAST(sum(events) AS BIGINT) AS events,
{_NO_ROUTE}
FROM ({states}) s
GROUP BY grant_id
"""


def current_state_sql(locate: Locate, manifest: Manifest) -> str:
    """The state table as of ``manifest``: the base, overridden by the delta."""
    if manifest.grants_base is None:
        return empty_select(GRANT_STATE_COLUMNS)
    base = parquet(locate(manifest.grants_base))
    if not manifest.grants_delta:
        return f"SELECT * FROM {base}"
    delta = parquet(locate(manifest.grants_delta))
    return (
        f"SELECT * FROM {delta} UNION ALL "
        f"SELECT b.* FROM {base} b ANTI JOIN {delta} d USING (grant_id)"
    )


def unrouted_sql(states: str) -> str:
    """``states`` without what the facts say: how the base is written."""
    cleared = ", ".join(f"CAST(NULL AS {kind}) AS {name}" for name, kind in ROUTED_STATE_COLUMNS)
    return f"SELECT * REPLACE ({cleared}) FROM ({states}) s"


def routed_state_sql(rows: str, routed: str) -> str:
    """The state ``rows`` with what ``routed`` (one row per grant) says attached."""
    attached = (
        "r.revoked_at AS routed_at, r.event_id AS routed_event_id, r.actor AS routed_actor, "
        "r.via AS routed_via, r.parent_grant_id AS parent_grant_id, "
        "r.delegation_depth AS delegation_depth"
    )
    return (
        f"SELECT s.* REPLACE ({attached}) FROM ({rows}) s LEFT JOIN ({routed}) r USING (grant_id)"
    )


def merge_state_sql(fresh: str, current: str) -> str:
    """New state for the grants in ``fresh``, combined with what ``current`` held."""
    return f"""
WITH fresh AS ({fresh}),
old AS (SELECT c.* FROM ({current}) c SEMI JOIN fresh USING (grant_id))
{combine_sql("SELECT * FROM fresh UNION ALL BY NAME SELECT * FROM old")}
"""


RECONCILED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("service_status", "VARCHAR"),
    ("reconciled_revoked_at", "TIMESTAMPTZ"),
    ("service_agent_id", "VARCHAR"),
    ("service_principal_id", "VARCHAR"),
)
"""What reconciliation says of a grant (``revocations.RECONCILED_GRANTS``)."""


def with_reconciled_sql(states: str, reconciled: str) -> str:
    """The state rows with what reconciliation says attached, plus a row per grant
    the service listed that no archived event names (its counts 0, the rest NULL)."""
    attached = ", ".join(f"r.{name}" for name, _ in RECONCILED_COLUMNS)
    only: list[str] = []
    for name, kind in GRANT_STATE_COLUMNS:
        if name in ("grant_id", "source"):
            only.append(f"r.{name}")
        elif kind == "BIGINT" and name != "delegation_depth":
            only.append(f"CAST(0 AS BIGINT) AS {name}")
        else:
            only.append(f"CAST(NULL AS {kind}) AS {name}")
    return f"""
SELECT s.*, {attached}
FROM ({states}) s LEFT JOIN ({reconciled}) r USING (grant_id)
UNION ALL
SELECT {", ".join(only)}, {attached}
FROM ({reconciled}) r ANTI JOIN ({states}) s USING (grant_id)
WHERE r.never_created
"""
