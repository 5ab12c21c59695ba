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
--
-- How: without --agent the events are counted as they are; with it, the
-- grants of the agent are looked up once and the events matched against them
-- (two branches, so that without --agent no grant_id is read).
WITH chosen AS (
    SELECT day, week, month, type
    FROM events
    WHERE $agent IS NULL
        AND {window(occurred_at)}
        AND ($source IS NULL OR source = $source)
    UNION ALL
    SELECT day, week, month, type
    FROM events
    WHERE $agent IS NOT NULL
        AND {window(occurred_at)}
        AND ($source IS NULL OR source = $source)
        AND {agent_events}
)
SELECT
    CASE $by WHEN 'day' THEN day WHEN 'week' THEN week WHEN 'month' THEN month END AS period,
    type,
    count(*) AS events
FROM chosen
GROUP BY ALL
ORDER BY period, events DESC, type
