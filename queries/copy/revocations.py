"""How grants end revoked: the revocation facts, the candidates, the first revocation.

A grant ends revoked along one of these paths (the producer's rules); each
is a *candidate* ``(at, rank, event_id, actor, via)`` and the grant's
revocation is the least candidate: the earliest ``at``; on a tie a direct
``grant.revoked`` (rank 0) before any other path (rank 1); then the lowest
event id.

- ``grant.revoked``: its grantId; actor revokedBy, else
  ``developer_or_principal``; via ``direct``.
- ``anomaly.auto_revoked``: each of revokedGrants; ``system``, ``anomaly``.
- ``consent_bundle.revoked`` with a truthy revokeGrant: the grant of that
  bundleId's consent_bundle.created; ``developer``, ``consent_bundle``.
- ``dpdp.consent.withdrawn`` with grantRevoked true: the grant of that
  recordId's dpdp.consent.created; ``principal``, ``consent_withdrawal``.
- ``dpdp.erasure.completed``: the grant of every dpdp.consent.created of that
  dataPrincipalId at or before it; ``principal``, ``erasure``.
- ``grant.revoked`` with cascade true, on R at T: every descendant of R
  through parentGrantId, walking only through grants not revoked before T;
  actor that grant.revoked's, via ``cascade``, event id the root's.

The first two name their grants, so the grant state keeps their earliest
candidate as it keeps any minimum (``grant_state``). The others need events
that are not keyed by the grant they revoke (a bundle, a consent record, a
person) or a walk over the delegation tree: the refresher keeps those events,
the *revocation facts*, in one small file, adds the facts of its new rows,
and computes these candidates again from all the facts (``routed_sql``),
attaching the result to the grant state's delta rows. The state is a merge
of minimums and the routed candidates a function of the set of facts, so
the answer is the same whatever order the events arrived in and however
refreshes split them.

The routed candidates are computed when the copy is refreshed rather than in
the view, and kept in the state rather than in a file of their own: the
recursive walk, or a join on every grant, would cost each report more than
the rest of the grants view does.
"""

from __future__ import annotations

from .manifest import Locate, Manifest
from .sql import empty_select, parquet

FACT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("seq", "BIGINT"),
    ("id", "VARCHAR"),
    ("type", "VARCHAR"),
    ("occurred_at", "TIMESTAMPTZ"),
    ("grant_id", "VARCHAR"),
    ("revoked_by", "VARCHAR"),
    ("parent_grant_id", "VARCHAR"),
    ("delegation_depth", "BIGINT"),
    ("bundle_id", "VARCHAR"),
    ("record_id", "VARCHAR"),
    ("data_principal_id", "VARCHAR"),
)

# Which events are facts: only those that can give or route a candidate (a
# grant.revoked without cascade, or a withdrawal that revoked nothing, cannot).
_FACT_RULES = {
    "grant.created": "parent_grant_id IS NOT NULL AND grant_id IS NOT NULL",
    "grant.revoked": "cascade AND grant_id IS NOT NULL",
    "consent_bundle.created": "bundle_id IS NOT NULL AND grant_id IS NOT NULL",
    "consent_bundle.revoked": "revokes_grant AND bundle_id IS NOT NULL",
    "dpdp.consent.created": "grant_id IS NOT NULL",
    "dpdp.consent.withdrawn": "revokes_grant AND record_id IS NOT NULL",
    "dpdp.erasure.completed": "data_principal_id IS NOT NULL",
}

UNREVOKED_ACTOR = "developer_or_principal"
"""The actor of a grant.revoked without revokedBy: the live service sends the
same event whether the developer or the principal revoked the grant."""


def facts_sql(events: str) -> str:
    """The revocation facts among the events in ``events`` (a table expression)."""
    names = ", ".join(name for name, _ in FACT_COLUMNS)
    types = ", ".join(f"'{t}'" for t in _FACT_RULES)
    rules = " ".join(f"WHEN '{t}' THEN {rule}" for t, rule in _FACT_RULES.items())
    return f"SELECT {names} FROM {events} WHERE type IN ({types}) AND CASE type {rules} END"


def current_facts_sql(locate: Locate, manifest: Manifest) -> str:
    """The facts as of ``manifest`` (typed and empty when it has none)."""
    if manifest.facts is None:
        return empty_select(FACT_COLUMNS)
    return f"SELECT * FROM {parquet(locate(manifest.facts))}"


def merge_facts_sql(fresh: str, current: str) -> str:
    """The facts in ``current`` and those of ``fresh`` it lacks: a union keyed by seq."""
    return (
        f"WITH fresh AS ({fresh}), old AS ({current}) "
        "SELECT * FROM old UNION ALL SELECT f.* FROM fresh f ANTI JOIN old USING (seq)"
    )


def candidate(at: str, rank: int, event_id: str, actor: str, via: str) -> str:
    """A revocation candidate as a struct; the least struct is the first revocation."""
    return (
        f"{{'revoked_at': {at}, 'rank': {rank}, 'event_id': CAST({event_id} AS VARCHAR), "
        f"'actor': CAST({actor} AS VARCHAR), 'via': CAST({via} AS VARCHAR)}}"
    )


def status_sql(revoked_at: str, expires_at: str, now: str = "now()") -> str:
    """A grant's status at ``now``: revoked, expired (never revoked, past its expiry) or active.

    The service never writes ``expired``; a grant whose expiry the archive
    does not know counts as active.
    """
    return (
        f"CASE WHEN {revoked_at} IS NOT NULL THEN 'revoked' "
        f"WHEN {expires_at} <= {now} THEN 'expired' ELSE 'active' END"
    )


_MAPPED = f"""
bundles AS (SELECT bundle_id, grant_id FROM f WHERE type = 'consent_bundle.created'),
records AS (
    SELECT record_id, data_principal_id, grant_id, occurred_at
    FROM f WHERE type = 'dpdp.consent.created'
),
mapped AS (
    SELECT b.grant_id, r.occurred_at AS revoked_at, r.id AS event_id,
        'developer' AS actor, 'consent_bundle' AS via
    FROM f r JOIN bundles b USING (bundle_id) WHERE r.type = 'consent_bundle.revoked'
    UNION ALL
    SELECT c.grant_id, w.occurred_at, w.id, 'principal', 'consent_withdrawal'
    FROM f w JOIN records c USING (record_id) WHERE w.type = 'dpdp.consent.withdrawn'
    UNION ALL
    SELECT c.grant_id, e.occurred_at, e.id, 'principal', 'erasure'
    FROM f e JOIN records c
        ON c.data_principal_id = e.data_principal_id AND c.occurred_at <= e.occurred_at
    WHERE e.type = 'dpdp.erasure.completed'
),
roots AS (
    SELECT grant_id AS root, occurred_at AS revoked_at, id AS event_id,
        coalesce(revoked_by, '{UNREVOKED_ACTOR}') AS actor
    FROM f WHERE type = 'grant.revoked'
)"""

# Why the walk may pass through grants that an earlier cascade revoked, and
# stop only at grants revoked before T some other way (``blocked``): the
# service's own cascade stops at any revoked grant, but the answer is the
# same. Each grant has one parent (the first grant.created's), so the path
# from an ancestor down to a grant D is unique. Every candidate the service's
# rule gives, this walk gives too; take one it gives and the service's rule
# does not: a walk from R at T reaching D through a grant X that a cascade
# from R' (above X) revoked at T' < T. Whatever blocked neither walk between
# X and D had no revocation before T, hence none before T', so R''s walk goes
# on to D too (unless a cascade earlier still revoked a grant between them:
# the same argument again, with an earlier time, and times are finite). So D
# has a candidate before T and the extra one never wins, nor ties.
_CASCADE = """
blocked AS (
    SELECT grant_id, min(revoked_at) AS revoked_at FROM (
        SELECT grant_id, least(revoked_event_at, auto_revoked_at) AS revoked_at
        FROM ({state_rows}) s SEMI JOIN edges USING (grant_id)
        WHERE revoked_event_at IS NOT NULL OR auto_revoked_at IS NOT NULL
        UNION ALL
        SELECT grant_id, revoked_at FROM mapped
    ) GROUP BY grant_id
),
-- UNION, not UNION ALL: a parent cycle (malformed events) ends when no row is new.
walk(grant_id, revoked_at, event_id, actor) AS (
    SELECT e.grant_id, r.revoked_at, r.event_id, r.actor
    FROM roots r JOIN edges e ON e.parent_grant_id = r.root
    LEFT JOIN blocked b ON b.grant_id = e.grant_id
    WHERE b.revoked_at IS NULL OR b.revoked_at >= r.revoked_at
    UNION
    SELECT e.grant_id, w.revoked_at, w.event_id, w.actor
    FROM walk w JOIN edges e ON e.parent_grant_id = w.grant_id
    LEFT JOIN blocked b ON b.grant_id = e.grant_id
    WHERE b.revoked_at IS NULL OR b.revoked_at >= w.revoked_at
)"""

# A delegated grant's depth: its delegationDepth, else counted up the parent
# chain to a grant whose delegationDepth is known; NULL when the chain ends
# (or loops) first. Only the facts are read: whether a grant at the top of a
# chain was created without a parent would take the whole grant state.
_DEPTH = """
climb(grant_id, node, steps) AS (
    SELECT grant_id, parent_grant_id, 1 FROM edges WHERE depth IS NULL
    UNION ALL
    SELECT c.grant_id, e.parent_grant_id, c.steps + 1
    FROM climb c JOIN edges e ON e.grant_id = c.node
    WHERE e.depth IS NULL AND c.steps < 64
),
derived AS (
    SELECT c.grant_id, min(c.steps + e.depth) AS depth
    FROM climb c JOIN edges e ON e.grant_id = c.node
    GROUP BY c.grant_id
)"""


def routed_sql(facts: str, state_rows: str) -> str:
    """Per grant the facts name: its first revocation but a direct one, parent, depth.

    Columns ``grant_id``; ``revoked_at``, ``event_id``, ``actor``, ``via`` of
    its least candidate of rank 1 when the facts route or cascade one to it
    (its anomaly candidate included), else NULL; ``parent_grant_id`` and
    ``delegation_depth`` (NULL for grants that are not delegated).
    ``state_rows`` are rows of the grant state, several per grant allowed
    (the base and the delta): only minimums are read from them, the direct
    and anomaly revocations of the grants the facts name.
    """
    first = candidate("revoked_at", 1, "event_id", "actor", "via")
    return f"""
WITH RECURSIVE f AS ({facts}),
edges AS (
    SELECT grant_id, struct_extract(e, 'parent') AS parent_grant_id,
        struct_extract(e, 'depth') AS depth
    FROM (
        SELECT grant_id, min({{'at': occurred_at, 'id': id, 'parent': parent_grant_id,
            'depth': delegation_depth}}) AS e
        FROM f WHERE type = 'grant.created' GROUP BY grant_id
    )
),{_MAPPED},{_CASCADE.format(state_rows=state_rows)},{_DEPTH},
routed AS (
    SELECT * FROM mapped
    UNION ALL SELECT grant_id, revoked_at, event_id, actor, 'cascade' FROM walk
),
firsts AS (
    SELECT grant_id, min({first}) AS r FROM (
        SELECT * FROM routed
        -- The anomaly candidates of the same grants, so that the tie between
        -- two candidates of rank 1 is decided here, not for every grant.
        UNION ALL
        SELECT grant_id, auto_revoked_at, auto_event_id, 'system', 'anomaly'
        FROM ({state_rows}) s SEMI JOIN routed USING (grant_id)
        WHERE auto_revoked_at IS NOT NULL
    ) GROUP BY grant_id
)
SELECT grant_id,
    struct_extract(x.r, 'revoked_at') AS revoked_at,
    struct_extract(x.r, 'event_id') AS event_id,
    struct_extract(x.r, 'actor') AS actor,
    struct_extract(x.r, 'via') AS via,
    e.parent_grant_id,
    coalesce(e.depth, d.depth) AS delegation_depth
FROM firsts x FULL JOIN edges e USING (grant_id) LEFT JOIN derived d USING (grant_id)
"""


RECONCILED_VIA = "reconciled"
"""The ``via`` of a revocation known only from reconciliation (the service's
state showed the grant revoked and no archived event revoked it)."""

RECONCILED_ACTOR = "unknown"
"""Its actor: the service's grant listings do not say who revoked a grant."""

# Per grant, what the newest reconcile observation of the service's grants
# said: its status, its revokedAt when a revocation was missing, and, for a
# grant the archive never saw created, the agent and principal the service
# listed. Read from the ``reconcile_findings`` view.
RECONCILED_GRANTS = """
SELECT grant_id,
    arg_max(source, observed_at) AS source,
    arg_max(service_status, observed_at) AS service_status,
    max(observed_at) AS service_observed_at,
    min(coalesce(service_at, observed_at)) FILTER (WHERE kind = 'revocation_missing')
        AS reconciled_revoked_at,
    bool_or(kind = 'grant_not_created') AS never_created,
    arg_max(json_extract_string(detail, '$.agentId'), observed_at) AS service_agent_id,
    arg_max(json_extract_string(detail, '$.principalId'), observed_at) AS service_principal_id
FROM reconcile_findings
WHERE kind IN ('grant_not_created', 'revocation_missing') AND grant_id IS NOT NULL
GROUP BY grant_id
"""
