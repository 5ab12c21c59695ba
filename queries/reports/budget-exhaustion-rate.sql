-- name: budget-exhaustion-rate
-- summary: Of the grants with budget activity in the window: how many reached 50%, 80%, ran out.
-- options: since, until, source, agent, by
-- by: agent
--
-- grants: grants with at least one budget.threshold or budget.exhausted event
-- whose occurred_at falls in [--since, --until) (and, with --source, from that
-- source), whether or not their grant.created is archived. For those grants,
-- counted over everything archived before --until: reached_50 / reached_80: a
-- threshold event with percentage (pct) >= 50 / >= 80, or a budget.exhausted
-- event; exhausted: a budget.exhausted event. exhaustion_rate = exhausted /
-- grants. median_seconds_to_exhaustion: median of exhausted_at - created_at
-- over exhausted grants whose grant.created is archived.
--
-- What the stream says, and why grants are counted rather than events: the
-- service sends nothing when a budget is allocated or a debit refused. After
-- each successful debit it sends one event chosen by the level reached, not
-- by a crossing: budget.exhausted when nothing remains, else a threshold of
-- pct 80 from 80% used, else pct 50 from 50%. So pct 50 and 80 repeat on
-- every debit at that level, a debit from 40% to 100% sends budget.exhausted
-- alone (the grant still counts as having reached 50% and 80%), and
-- exhausted happens at most once per grant. The allocation itself (initial)
-- is not in the live stream.
-- --agent filters on the grant's agent; --by agent gives one row per agent.
--
-- How: without --source, the grants view decides: a first or last budget
-- event in the window, else any of budget_times (when each of the grant's
-- budget events occurred); with --source, the events do.
WITH active AS (
    SELECT agent_id, created_at, budget_50_at, budget_80_at, exhausted_at
    FROM grants
    WHERE $source IS NULL AND first_budget_at IS NOT NULL
        AND {overlaps(first_budget_at, last_budget_at)}
        AND ({window(first_budget_at)}
            OR {window(last_budget_at)}
            OR list_bool_or(list_transform(budget_times, lambda t: {window(t)})))
    UNION ALL
    SELECT agent_id, created_at, budget_50_at, budget_80_at, exhausted_at
    FROM grants
    WHERE $source IS NOT NULL AND grant_id IN (
        SELECT grant_id
        FROM events
        WHERE source = $source
            AND type IN ('budget.threshold', 'budget.exhausted')
            AND grant_id IS NOT NULL
            AND {window(occurred_at)})
),
g AS (
    SELECT agent_id, created_at, exhausted_at,
        budget_50_at IS NOT NULL AND ($until IS NULL OR budget_50_at < $until) AS r50,
        budget_80_at IS NOT NULL AND ($until IS NULL OR budget_80_at < $until) AS r80,
        exhausted_at IS NOT NULL AND ($until IS NULL OR exhausted_at < $until) AS ex
    FROM active
    WHERE $agent IS NULL OR agent_id = $agent
)
SELECT
    CASE WHEN $by = 'agent' THEN agent_id END AS agent_id,
    count(*) AS grants,
    count(*) FILTER (WHERE r50) AS reached_50,
    count(*) FILTER (WHERE r80) AS reached_80,
    count(*) FILTER (WHERE ex) AS exhausted,
    count(*) FILTER (WHERE ex) / count(*) AS exhaustion_rate,
    median((epoch_us(exhausted_at) - epoch_us(created_at)) / 1e6)
        FILTER (WHERE ex AND created_at IS NOT NULL)
        AS median_seconds_to_exhaustion
FROM g
GROUP BY ALL
ORDER BY grants DESC, agent_id
