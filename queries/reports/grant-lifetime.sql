-- name: grant-lifetime
-- summary: How long grants lived, created to revoked: count, median, p90, by actor and path.
-- options: since, until, source, agent, by
-- by: agent
--
-- Grants whose first revocation (revoked_at) falls in [--since, --until) and
-- whose grant.created is archived; lifetime = revoked_at - created_at in
-- seconds. One row per actor and path (via), read from the stream as in
-- revocations-by-actor (direct, cascade, anomaly, consent_bundle,
-- consent_withdrawal, erasure), and a row with actor and via 'all'.
-- median_seconds and p90_seconds are continuous quantiles (interpolated).
-- without_created counts revoked grants left out because their grant.created
-- is not in the archive. Grants that expired rather than being revoked are
-- not counted: expiry is no event.
WITH r AS (
    SELECT
        CASE WHEN $by = 'agent' THEN agent_id END AS agent_id,
        revoked_by,
        revoked_via,
        (epoch_us(revoked_at) - epoch_us(created_at)) / 1e6 AS seconds
    FROM grants
    WHERE revoked_at IS NOT NULL
        AND {window(revoked_at)}
        AND ($source IS NULL OR source = $source)
        AND ($agent IS NULL OR agent_id = $agent)
)
SELECT
    agent_id,
    CASE WHEN grouping(revoked_by) = 1 THEN 'all' ELSE revoked_by END AS actor,
    CASE WHEN grouping(revoked_via) = 1 THEN 'all' ELSE revoked_via END AS via,
    count(seconds) AS grants,
    quantile_cont(seconds, 0.5) AS median_seconds,
    quantile_cont(seconds, 0.9) AS p90_seconds,
    count(*) - count(seconds) AS without_created
FROM r
GROUP BY GROUPING SETS ((agent_id, revoked_by, revoked_via), (agent_id))
ORDER BY agent_id NULLS FIRST, grouping(revoked_by) DESC, grants DESC, actor, via
