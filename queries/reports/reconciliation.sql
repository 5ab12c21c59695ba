-- name: reconciliation
-- summary: What each reconcile run found that the archive lacks, per kind of finding.
-- options: since, until, source
--
-- One row per reconcile run started in [--since, --until) and kind of
-- finding, from reconcile_runs and reconcile_findings: the run (id, source,
-- started_at, finished_at, outcome, service records read, requests made),
-- the kind and how many findings of it the run recorded, and of those how
-- many the archive still lacks (open: the kind and subject appear in the
-- newest completed run of that source too). A run without findings (or one
-- that failed) gives one row with kind NULL and findings 0. Kinds:
-- grant_not_created, revocation_missing, bundle_revocation_missing,
-- dpdp_withdrawal_missing, budget_events_missing, webhook_event_missing
-- (README, "Reconciling with the service's state"). Newest run first.
WITH runs AS (
    SELECT * FROM reconcile_runs
    WHERE {window(started_at)}
        AND ($source IS NULL OR source = $source)
),
newest AS (
    SELECT source, max(id) AS run_id FROM reconcile_runs
    WHERE outcome = 'completed' GROUP BY source
),
open_findings AS (
    SELECT f.source, f.kind, f.subject_id
    FROM reconcile_findings f JOIN newest n ON f.run_id = n.run_id
),
counted AS (
    SELECT f.run_id, f.kind, count(*) AS findings,
        count(o.subject_id) AS still_open
    FROM reconcile_findings f
    LEFT JOIN open_findings o USING (source, kind, subject_id)
    GROUP BY f.run_id, f.kind
)
SELECT r.id AS run_id,
    r.source,
    r.started_at,
    r.finished_at,
    r.outcome,
    r.observed,
    r.requests,
    c.kind,
    coalesce(c.findings, 0) AS findings,
    coalesce(c.still_open, 0) AS still_open
FROM runs r LEFT JOIN counted c ON c.run_id = r.id
ORDER BY r.started_at DESC, r.id DESC, c.kind NULLS FIRST
