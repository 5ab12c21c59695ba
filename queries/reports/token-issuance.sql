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
--
-- How: events that name their agent are counted directly. For the others the
-- grants view keeps per-grant counts (agentless_*), used as they are when all
-- of a grant's agentless tokens fall inside the window; only grants whose
-- agentless tokens straddle a window edge (every such grant, with --source)
-- are joined with their events.
WITH t AS (
    SELECT
        agent_id,
        1 AS tokens,
        CASE WHEN method = 'exchange' THEN 1 ELSE 0 END AS exchange,
        CASE WHEN method = 'refresh' THEN 1 ELSE 0 END AS refresh
    FROM events
    WHERE type = 'token.issued' AND (agent_id IS NOT NULL OR grant_id IS NULL)
        AND {window(occurred_at)}
        AND ($source IS NULL OR source = $source)
    UNION ALL
    SELECT agent_id, agentless_tokens, agentless_exchange, agentless_refresh
    FROM grants
    WHERE agentless_tokens > 0 AND $source IS NULL
        AND {window(agentless_first_at, agentless_last_at)}
    UNION ALL
    SELECT
        g.agent_id,
        1,
        CASE WHEN e.method = 'exchange' THEN 1 ELSE 0 END,
        CASE WHEN e.method = 'refresh' THEN 1 ELSE 0 END
    FROM events e
    JOIN (
        SELECT grant_id, agent_id FROM grants
        WHERE agentless_tokens > 0
            AND ($source IS NOT NULL
                OR ($since IS NOT NULL AND agentless_first_at < $since
                    AND agentless_last_at >= $since)
                OR ($until IS NOT NULL AND agentless_last_at >= $until
                    AND agentless_first_at < $until))
    ) g USING (grant_id)
    WHERE e.type = 'token.issued' AND e.agent_id IS NULL
        AND {window(e.occurred_at)}
        AND ($source IS NULL OR e.source = $source)
)
SELECT
    agent_id,
    CAST(sum(tokens) AS BIGINT) AS tokens,
    CAST(sum(exchange) AS BIGINT) AS exchange,
    CAST(sum(refresh) AS BIGINT) AS refresh,
    CAST(sum(tokens) - sum(exchange) - sum(refresh) AS BIGINT) AS method_unknown,
    CASE WHEN sum(exchange) + sum(refresh) > 0
        THEN sum(refresh) / (sum(exchange) + sum(refresh))
    END AS refresh_ratio
FROM t
WHERE $agent IS NULL OR agent_id = $agent
GROUP BY agent_id
ORDER BY tokens DESC, agent_id NULLS LAST
