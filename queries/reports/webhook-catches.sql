-- name: webhook-catches
-- summary: Events the webhook receiver archived before the stream did, per day, week or month and type.
-- options: since, until, source, by
-- by: day, week, month
-- default-by: day
--
-- Counts archived events (each event id once) whose occurred_at falls in
-- [--since, --until), per UTC calendar period and event type, by the channel
-- that delivered them first (events.channel): by_stream, by_webhook, and the
-- webhook's share in percent. Only the types Grantex delivers by webhook
-- (grant.created, grant.revoked, token.issued) are counted.
--
-- An event counted by_webhook reached the archive through `receive` before
-- any stream connection delivered it: almost always one the stream missed (a
-- restart, a gap between cron runs), since the stream delivers at once and a
-- webhook some seconds later. A stream copy arriving after the webhook's is a
-- duplicate and is not recorded, so the two cannot be told apart exactly.
SELECT
    CASE $by WHEN 'day' THEN day WHEN 'week' THEN week WHEN 'month' THEN month END AS period,
    type,
    count(*) FILTER (WHERE channel = 'stream') AS by_stream,
    count(*) FILTER (WHERE channel = 'webhook') AS by_webhook,
    round(100.0 * count(*) FILTER (WHERE channel = 'webhook') / count(*), 1) AS webhook_pct
FROM events
WHERE type IN ('grant.created', 'grant.revoked', 'token.issued')
    AND {window(occurred_at)}
    AND ($source IS NULL OR source = $source)
GROUP BY ALL
ORDER BY period, type
