-- name: token-issuance
-- summary: Tokens issued per agent, by method where known, and the refresh ratio.
-- options: since, until, source, agent
--
-- Counts token.issued events whose occurred_at falls in [--since, --until),
-- per agent: the event's agentId, else the agent of the grant it names
-- (documented envelopes carry only grantId), else NULL. exchange and refresh
-- count events whose method says so; method_unknown counts the rest (the live
-- service sends no method). refresh_ratio = refresh / (exchange + refresh),
-- NULL when no event of the agent names a method.
WITH t AS (
    SELECT agent_id, method
    FROM events
    WHERE type = 'token.issued' AND agent_id IS NOT NULL
        AND ($since IS NULL OR occurred_at >= $since)
        AND ($until IS NULL OR occurred_at < $until)
        AND ($source IS NULL OR source = $source)
    UNION ALL
    SELECT g.agent_id, e.method
    FROM events e LEFT JOIN grants g USING (grant_id)
    WHERE e.type = 'token.issued' AND e.agent_id IS NULL
        AND ($since IS NULL OR e.occurred_at >= $since)
        AND ($until IS NULL OR e.occurred_at < $until)
        AND ($source IS NULL OR e.source = $source)
)
SELECT
    agent_id,
    count(*) AS tokens,
    count(*) FILTER (WHERE method = 'exchange') AS exchange,
    count(*) FILTER (WHERE method = 'refresh') AS refresh,
    count(*) FILTER (WHERE method IS NULL OR method NOT IN ('exchange', 'refresh'))
        AS method_unknown,
    CASE WHEN count(*) FILTER (WHERE method IN ('exchange', 'refresh')) > 0
        THEN count(*) FILTER (WHERE method = 'refresh')
            / count(*) FILTER (WHERE method IN ('exchange', 'refresh'))
    END AS refresh_ratio
FROM t
WHERE $agent IS NULL OR agent_id = $agent
GROUP BY agent_id
ORDER BY tokens DESC, agent_id NULLS LAST
