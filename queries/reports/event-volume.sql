-- name: event-volume
-- summary: Events per type per day, week or month (--by, default day).
-- options: since, until, source, agent, by
-- by: day, week, month
-- default-by: day
--
-- Counts archived events (each event id once) whose occurred_at falls in
-- [--since, --until), per UTC calendar period and event type, unknown types
-- included. Weeks start on Monday. --agent keeps events that carry that
-- agentId or belong to a grant of that agent.
SELECT
    CASE $by WHEN 'day' THEN day WHEN 'week' THEN week WHEN 'month' THEN month END AS period,
    type,
    count(*) AS events
FROM events
WHERE ($since IS NULL OR occurred_at >= $since)
    AND ($until IS NULL OR occurred_at < $until)
    AND ($source IS NULL OR source = $source)
    AND ($agent IS NULL OR agent_id = $agent
        OR grant_id IN (SELECT grant_id FROM grants WHERE agent_id = $agent))
GROUP BY ALL
ORDER BY period, events DESC, type
