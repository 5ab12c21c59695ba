-- name: top-agents
-- summary: Agents ranked by grants, with their revocation and exhaustion rates.
-- options: since, until, source, agent
--
-- grants: grants whose created_at falls in [--since, --until); with neither
-- bound given, every grant in the archive (also those whose grant.created
-- predates it). revoked: those grants revoked at any time archived, by any
-- actor and path (direct, cascade, anomaly, consent bundle, DPDP withdrawal
-- or erasure: see revocations-by-actor). exhausted: those with a
-- budget.exhausted event, at any time archived. Rates are per grant.
-- tokens: tokens issued to those grants. Ranked by grants, then revocation
-- rate, then agent id.
SELECT
    rank() OVER (ORDER BY count(*) DESC) AS rank,
    agent_id,
    count(*) AS grants,
    count(revoked_at) AS revoked,
    count(revoked_at) / count(*) AS revocation_rate,
    count(exhausted_at) AS exhausted,
    count(exhausted_at) / count(*) AS exhaustion_rate,
    sum(tokens_issued) AS tokens
FROM grants
WHERE (($since IS NULL AND $until IS NULL)
        OR (created_at IS NOT NULL AND {window(created_at)}))
    AND ($source IS NULL OR source = $source)
    AND ($agent IS NULL OR agent_id = $agent)
GROUP BY agent_id
ORDER BY grants DESC, revocation_rate DESC, agent_id NULLS LAST
