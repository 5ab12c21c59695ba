-- name: ingest-coverage
-- summary: The spans each ingest run covered, gaps between runs, rejected frames per run.
-- options: since, until, source
--
-- One row per run in ingest_runs that overlaps [--since, --until): its source,
-- when it ran (started_at to finished_at, NULL while running), its outcome,
-- the occurred_at span of the events it received, what it received, inserted
-- and skipped as duplicates, and rejected: frames kept in rejected_events for
-- the run. gap_seconds: time between the end of the previous run of the same
-- source and this run's start, when positive; events the producer sent in a gap
-- are only recovered if it replays them (the live service does not).
WITH runs AS (
    SELECT r.*,
        lag(coalesce(r.finished_at, r.started_at))
            OVER (PARTITION BY r.source ORDER BY r.started_at, r.id) AS previous_end
    FROM ingest_runs r
),
rejected AS (
    SELECT run_id, count(*) AS frames FROM rejected_events GROUP BY run_id
)
SELECT
    runs.source,
    runs.id AS run_id,
    started_at,
    finished_at,
    outcome,
    first_occurred_at,
    last_occurred_at,
    received,
    inserted,
    duplicates,
    coalesce(rejected.frames, 0) AS rejected,
    CASE WHEN epoch(started_at) - epoch(previous_end) > 0
        THEN epoch(started_at) - epoch(previous_end) END AS gap_seconds
FROM runs LEFT JOIN rejected ON rejected.run_id = runs.id
WHERE {overlaps(started_at, coalesce(finished_at, now()))}
    AND ($source IS NULL OR runs.source = $source)
ORDER BY runs.source, started_at, run_id
