-- name: ingest-coverage
-- summary: When each source's stream was covered by a connection, the gaps between, and their causes.
-- options: since, until, source
--
-- A timeline per source, from ingest_connections: rows of kind 'covered' (the
-- stream was connected) and 'gap' (it was not: the live service keeps no
-- history, so events it emitted then are lost, except those the webhook
-- receiver caught; Grantex delivers only grant.created, grant.revoked and
-- token.issued by webhook, so events of every other type in a gap stay lost),
-- ordered by time.
--
-- What a connection covers. The service subscribes a client shortly after its
-- request arrives and sends the response head only with the first event or
-- keepalive, so a connection covers from requested_at (not its first byte) to
-- closed_at. Only a connection answered with a 2xx status covers anything;
-- refused attempts (401, 403, 429, 5xx, connection errors) cover nothing. A
-- connection still open (closed_at NULL) covers up to now while its run is
-- running (as does a request of a running run still waiting for its response
-- head), and up to the last moment it was recorded alive
-- (last_seen_at, else first_byte_at, else requested_at) when its run is not:
-- a killed run never covers up to now. A request whose run ended while it
-- waited for its response head (closed 'run ended before the response head',
-- or abandoned with no status and no first byte) covers nothing: the gap it
-- ends in names the run in its cause, and it is not a failed attempt.
--
-- Spans. Covered time is merged per source across overlapping or touching
-- connections and across runs; each 'covered' row is one merged span. Gaps
-- are the time between spans, and after the last span up to now when no
-- connection is open then (no ingest running, or a run that is reconnecting):
-- events are being lost against the live service then too. Time before a
-- source's first span is not a gap (the archive starts there).
--
-- The window. Rows are cut to [--since, --until), and never reach past now:
-- a span or gap that straddles a bound starts or ends at it. Within the window
-- the seconds of a source's rows add up to the time from its first span (or
-- --since, if later) to --until (or now, if earlier). A span of no length (a
-- connection closed as it opened) gets no row.
--
-- Columns: source; kind; start_at, end_at, seconds; runs: the ingest runs
-- whose connections make up a span, or for a gap the run whose connection
-- ended before it and the one that connected after it; connections: the 2xx
-- connections merged into a span (NULL for a gap); failed_attempts: attempts
-- that covered nothing (other than requests ended waiting for their head),
-- requested during the row's time (for a gap, with their status codes in
-- cause); events: events received over a span's
-- connections, and rejected: frames kept in rejected_events for the source
-- received during the span, both for the whole span even when the window cuts
-- it (NULL for a gap); webhook_events: the source's events archived with
-- channel 'webhook' (`receive` delivered them first) whose occurred_at is in
-- the row's time, also for the whole row, 0 when none: for a gap, what the
-- receiver caught while the stream was not connected; for a span, events the
-- receiver delivered before the connected stream did (a new connection's
-- first moments, before the service has subscribed it). A row holds its start
-- but not its end, so an event on the boundary of a span and a gap counts
-- once; occurred_at is the service's clock and the rows the archive's, so
-- clock skew can move an event across a boundary. cause, for a gap: what
-- ended the coverage and what resumed it, for example 'run 3 abandoned; next
-- run 4 started', 'run 5 reconnect after: stream ended; 2 failed attempts
-- (503)', 'no ingest running since run 7 finished (idle)', 'no ingest running
-- since run 8 finished (interrupted); run 8 ended while its request waited for
-- the response head' (each run that did so while the gap lasted). Per-run counts
-- (received, inserted, duplicates, rejected) are in the ingest_runs view
-- (`grantex-archive sql`).
--
-- Every other report prints a warning on stderr when its window holds a gap of
-- the source(s) it covers (see docs/analytics.md).
WITH attempts AS (
    SELECT c.id, c.run_id, r.source, r.outcome AS run_outcome, c.requested_at, c.closed_at,
        c.status_code, c.events, c.close_reason,
        coalesce(c.status_code IS NULL AND c.first_byte_at IS NULL AND c.close_reason IN (
            'run ended before the response head',
            'run abandoned: closed at its last recorded activity'), false) AS waited,
        -- coalesce: a refused connection (no status, closed) is false, not NULL.
        coalesce(c.status_code BETWEEN 200 AND 299
            OR (c.status_code IS NULL AND c.closed_at IS NULL AND r.outcome = 'running'),
            false) AS covers,
        greatest(c.requested_at, CASE
            WHEN c.closed_at IS NOT NULL THEN least(c.closed_at, $now)
            WHEN r.outcome = 'running' THEN $now
            ELSE coalesce(c.last_seen_at, c.first_byte_at, c.requested_at) END) AS covered_until
    FROM ingest_connections c JOIN ingest_runs r ON r.id = c.run_id
    WHERE ($source IS NULL OR r.source = $source) AND c.requested_at <= $now
),
reach AS (
    SELECT *, max(covered_until) OVER (
        PARTITION BY source ORDER BY requested_at, id
        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reached
    FROM attempts WHERE covers
),
islands AS (
    SELECT *, sum(CASE WHEN reached IS NULL OR requested_at > reached THEN 1 ELSE 0 END) OVER (
        PARTITION BY source ORDER BY requested_at, id ROWS UNBOUNDED PRECEDING) AS island
    FROM reach
),
merged AS (
    SELECT source, island,
        min(requested_at) AS start_at,
        max(covered_until) AS end_at,
        first(id ORDER BY requested_at, id) AS resumed_by,
        first(id ORDER BY covered_until DESC, id DESC) AS ended_by,
        list(DISTINCT run_id ORDER BY run_id) AS runs,
        count(*) AS connections,
        sum(events) AS events
    FROM islands GROUP BY source, island
),
-- Spans and gaps meeting the window; neighbours are found before the cut.
spans AS (
    SELECT * FROM merged WHERE {overlaps(start_at, end_at)}
),
gaps AS (
    SELECT * FROM (
        SELECT source, end_at AS start_at,
            coalesce(lead(start_at) OVER w, $now) AS end_at,
            ended_by, lead(resumed_by) OVER w AS resumed_by
        FROM merged
        WINDOW w AS (PARTITION BY source ORDER BY start_at)
    ) WHERE end_at > start_at AND {overlaps(start_at, end_at)}
),
refused AS (
    SELECT * FROM attempts WHERE NOT covers AND NOT waited
),
-- Spans and gaps do not overlap: each attempt or frame belongs to the latest
-- one that starts before it, if it ends after it.
gap_failures AS (
    SELECT g.source, g.start_at, count(*) AS attempts,
        string_agg(DISTINCT coalesce(CAST(a.status_code AS VARCHAR), 'no response'), ', '
            ORDER BY coalesce(CAST(a.status_code AS VARCHAR), 'no response')) AS codes
    FROM refused a ASOF JOIN gaps g ON a.source = g.source AND a.requested_at >= g.start_at
    WHERE a.requested_at < g.end_at
    GROUP BY g.source, g.start_at
),
-- A request ended waiting belongs to the gap its close falls in.
gap_waits AS (
    SELECT g.source, g.start_at, string_agg(DISTINCT
        'run ' || a.run_id || ' ended while its request waited for the response head', '; '
        ORDER BY 'run ' || a.run_id || ' ended while its request waited for the response head')
        AS runs
    FROM (SELECT * FROM attempts WHERE waited) a
    ASOF JOIN gaps g ON a.source = g.source AND a.closed_at >= g.start_at
    WHERE a.closed_at < g.end_at
    GROUP BY g.source, g.start_at
),
span_failures AS (
    SELECT s.source, s.start_at, count(*) AS attempts
    FROM refused a ASOF JOIN spans s ON a.source = s.source AND a.requested_at >= s.start_at
    WHERE a.requested_at < s.end_at
    GROUP BY s.source, s.start_at
),
-- Webhook-first events: each belongs to the span or gap (of some length) that
-- starts at or before its occurred_at, if it is before that row's end.
rows_held AS (
    SELECT source, start_at, end_at FROM spans WHERE end_at > start_at
    UNION ALL SELECT source, start_at, end_at FROM gaps
),
row_webhooks AS (
    SELECT r.source, r.start_at, count(*) AS events
    FROM (SELECT source, occurred_at FROM events WHERE channel = 'webhook') e
    ASOF JOIN rows_held r ON e.source = r.source AND e.occurred_at >= r.start_at
    WHERE e.occurred_at < r.end_at
    GROUP BY r.source, r.start_at
),
span_rejected AS (
    SELECT s.source, s.start_at, count(*) AS frames
    FROM rejected_events j ASOF JOIN spans s ON j.source = s.source AND j.received_at >= s.start_at
    WHERE j.received_at <= s.end_at
    GROUP BY s.source, s.start_at
),
-- Per source: the run still running, and the newest run (for a gap up to now).
sources AS (
    SELECT source,
        max(id) FILTER (WHERE outcome = 'running') AS running_run,
        arg_max(id || ' ' || CASE outcome WHEN 'abandoned' THEN 'was abandoned'
            ELSE 'finished (' || outcome || ')' END, started_at)
            FILTER (WHERE started_at <= $now) AS last_run
    FROM ingest_runs GROUP BY source
),
causes AS (
    SELECT g.*, e.run_id AS ended_run, e.run_outcome AS ended_outcome,
        coalesce(e.close_reason, 'no reason recorded') AS ended_reason,
        s.run_id AS resumed_run,
        CASE WHEN s.run_id IS NULL THEN o.running_run END AS running_run,
        o.last_run,
        coalesce(f.attempts, 0) AS failed_attempts, f.codes, q.runs AS waited,
        coalesce(w.events, 0) AS webhook_events
    FROM gaps g
    JOIN attempts e ON e.id = g.ended_by
    JOIN sources o ON o.source = g.source
    LEFT JOIN attempts s ON s.id = g.resumed_by
    LEFT JOIN gap_failures f ON f.source = g.source AND f.start_at = g.start_at
    LEFT JOIN gap_waits q ON q.source = g.source AND q.start_at = g.start_at
    LEFT JOIN row_webhooks w ON w.source = g.source AND w.start_at = g.start_at
),
gap_rows AS (
    SELECT source, 'gap' AS kind, start_at, end_at,
        list_sort(list_distinct(list_value(ended_run, coalesce(resumed_run, running_run)))) AS runs,
        NULL::BIGINT AS connections, failed_attempts, NULL::BIGINT AS events,
        NULL::BIGINT AS rejected, webhook_events,
        concat_ws('; ',
            CASE
                WHEN resumed_run IS NULL AND running_run IS NULL
                    THEN 'no ingest running since run ' || last_run
                WHEN ended_run = coalesce(resumed_run, running_run) AND resumed_run IS NULL
                    THEN 'run ' || ended_run || ' reconnecting after: ' || ended_reason
                WHEN ended_run = resumed_run
                    THEN 'run ' || ended_run || ' reconnect after: ' || ended_reason
                WHEN ended_outcome = 'abandoned' THEN 'run ' || ended_run || ' abandoned'
                WHEN ended_outcome = 'running'
                    THEN 'run ' || ended_run || ' connection ended: ' || ended_reason
                ELSE 'run ' || ended_run || ' ended (' || ended_outcome || ')' END,
            CASE
                WHEN resumed_run IS NOT NULL AND resumed_run <> ended_run
                    THEN 'next run ' || resumed_run || ' started'
                WHEN running_run IS NOT NULL AND running_run <> ended_run
                    THEN 'run ' || running_run || ' running, not connected' END,
            waited,
            CASE WHEN failed_attempts > 0 THEN failed_attempts || ' failed attempt'
                || CASE WHEN failed_attempts > 1 THEN 's' ELSE '' END
                || ' (' || codes || ')' END) AS cause
    FROM causes
),
span_rows AS (
    SELECT s.source, 'covered' AS kind, s.start_at, s.end_at, s.runs, s.connections,
        coalesce(f.attempts, 0) AS failed_attempts, s.events,
        coalesce(j.frames, 0) AS rejected, coalesce(w.events, 0) AS webhook_events,
        NULL AS cause
    FROM spans s
    LEFT JOIN span_failures f ON f.source = s.source AND f.start_at = s.start_at
    LEFT JOIN span_rejected j ON j.source = s.source AND j.start_at = s.start_at
    LEFT JOIN row_webhooks w ON w.source = s.source AND w.start_at = s.start_at
),
timeline AS (
    SELECT * FROM span_rows UNION ALL SELECT * FROM gap_rows
),
cut AS (
    SELECT source, kind,
        greatest(start_at, coalesce($since, start_at)) AS start_at,
        least(end_at, coalesce($until, end_at)) AS end_at,
        runs, connections, failed_attempts, events, rejected, webhook_events, cause
    FROM timeline
)
SELECT source, kind, start_at, end_at, (epoch_us(end_at) - epoch_us(start_at)) / 1e6 AS seconds,
    runs, connections, failed_attempts, events, rejected, webhook_events, cause
FROM cut
WHERE end_at > start_at
ORDER BY source, start_at, kind
