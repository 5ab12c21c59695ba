-- name: chain
-- summary: The hash chain per day, week or month (--by, default day): links written, rows sealed.
-- options: since, until, by
-- by: day, week, month
-- default-by: day
--
-- One row per UTC calendar period in which links of the archive's hash chain
-- were written (a link's created_at in [--since, --until)), oldest first:
-- links: how many links; first_link, last_link: the lowest and highest link
-- number; events, rejected_frames, run_records: the rows those links sealed,
-- per kind (the sum of their count). A transaction that writes rows writes one
-- link per kind it wrote; the rows `seal` linked in after the fact (an archive
-- written before the chain) count in the period `seal` ran. Weeks start on
-- Monday.
--
-- This counts what the links say; `grantex-archive verify-archive` (with
-- --since/--until for a window) checks that the rows agree with them. Digest
-- files are not in the analytics copy (they live in the digest directory, kept
-- apart from the database, which reports do not read): `grantex-archive status
-- --digest-dir DIR` shows the newest one and how many were written on each of
-- the last 7 days.
WITH links AS (
    SELECT n, kind, count, created_at
    FROM chain_links
    WHERE {window(created_at)}
)
SELECT
    CASE $by
        WHEN 'day' THEN CAST(created_at AS DATE)
        WHEN 'week' THEN CAST(date_trunc('week', created_at) AS DATE)
        WHEN 'month' THEN CAST(date_trunc('month', created_at) AS DATE)
    END AS period,
    count(*) AS links,
    min(n) AS first_link,
    max(n) AS last_link,
    coalesce(sum(count) FILTER (WHERE kind = 'events'), 0) AS events,
    coalesce(sum(count) FILTER (WHERE kind = 'rejected'), 0) AS rejected_frames,
    coalesce(sum(count) FILTER (WHERE kind = 'runs'), 0) AS run_records
FROM links
GROUP BY ALL
ORDER BY period
