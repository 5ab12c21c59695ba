-- name: revocations-by-actor
-- summary: Revoked grants per actor (developer, principal, system, unknown) with share of total.
-- options: since, until, source, agent, by
-- by: day, week, month, agent
--
-- Counts grants (not events) whose revoked_at falls in [--since, --until).
-- A grant's actor is the revokedBy of its grant.revoked event when the event
-- carries one; 'system' when an anomaly.auto_revoked event lists the grant;
-- otherwise 'unknown'. Nothing is dropped: a revocation of a grant created
-- before the archive began still counts. --source and --agent filter on the
-- grant. share is revocations / all revocations in the same period or agent
-- group (a fraction between 0 and 1).
SELECT *,
    revocations / sum(revocations) OVER (PARTITION BY period, agent_id) AS share
FROM (
    SELECT
        period(revoked_at, $by) AS period,
        CASE WHEN $by = 'agent' THEN agent_id END AS agent_id,
        revoked_by AS actor,
        count(*) AS revocations
    FROM grants
    WHERE revoked_at IS NOT NULL
        AND {window(revoked_at)}
        AND ($source IS NULL OR source = $source)
        AND ($agent IS NULL OR agent_id = $agent)
    GROUP BY ALL
)
ORDER BY period NULLS FIRST, agent_id NULLS FIRST, revocations DESC, actor
