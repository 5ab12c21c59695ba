-- name: revocations-by-actor
-- summary: Revoked grants per actor and path (direct, cascade, anomaly, consent bundle, DPDP) with share of total.
-- options: since, until, source, agent, by
-- by: day, week, month, agent, via
-- drops: via=actor
--
-- Counts grants (not events) whose first revocation (revoked_at) falls in
-- [--since, --until), one row per actor and path (via); --by via counts per
-- path alone. Each revocation is read from the stream by these rules (via:
-- event, grant revoked; actor):
-- - direct: grant.revoked, its grant; its revokedBy (documented producers),
--   else developer_or_principal.
-- - cascade: grant.revoked with cascade true, every descendant through
--   grant.created's parentGrantId, walking only through grants not revoked
--   before it; as that grant.revoked.
-- - anomaly: anomaly.auto_revoked, each of revokedGrants; system.
-- - consent_bundle: consent_bundle.revoked with a truthy revokeGrant, the
--   grant of that bundle's consent_bundle.created; developer.
-- - consent_withdrawal: dpdp.consent.withdrawn with grantRevoked true, the
--   grant of that record's dpdp.consent.created; principal.
-- - erasure: dpdp.erasure.completed, the grant of every dpdp.consent.created
--   of that dataPrincipalId at or before it; principal.
-- - reconciled: no event; a revocation_missing finding of `reconcile` (the
--   service listed the grant revoked, no archived event revoked it), at the
--   service's revokedAt; unknown. Only while no event revokes the grant.
--
-- developer_or_principal: the live service sends the same grant.revoked
-- (without revokedBy) whether the developer revoked the grant or the
-- principal did on the consent page; the stream cannot tell them apart.
-- A grant revoked several times counts once, by its first revocation (on a
-- tie in time, a direct grant.revoked first, then the lowest event id). A
-- revocation of a grant the archive never saw created still counts (its
-- agent unknown). Not here, because the stream shows nothing of them: grants
-- deleted with their agent, revoked tokens, and grants that expired (the
-- grants view's status says which are past expiresAt).
-- --source and --agent filter on the grant. share is revocations / all
-- revocations in the same period or agent group (a fraction between 0 and 1).
SELECT *,
    revocations / sum(revocations) OVER (PARTITION BY period, agent_id) AS share
FROM (
    SELECT
        period(revoked_at, $by) AS period,
        CASE WHEN $by = 'agent' THEN agent_id END AS agent_id,
        CASE WHEN $by IS DISTINCT FROM 'via' THEN revoked_by END AS actor,
        revoked_via AS via,
        count(*) AS revocations
    FROM grants
    WHERE revoked_at IS NOT NULL
        AND {window(revoked_at)}
        AND ($source IS NULL OR source = $source)
        AND ($agent IS NULL OR agent_id = $agent)
    GROUP BY ALL
)
ORDER BY period NULLS FIRST, agent_id NULLS FIRST, revocations DESC, actor, via
