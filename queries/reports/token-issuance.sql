-- name: token-issuance
-- summary: Tokens issued per agent by kind (exchange, delegation, refresh), and the refresh ratio.
-- options: since, until, source, agent
--
-- Counts token.issued events whose occurred_at falls in [--since, --until),
-- per agent: the event's agentId, else the agent of the grant it names
-- (documented envelopes carry only grantId), else NULL.
--
-- Kind, as in the tokens view: a method field (documented producers) wins.
-- The live service sends none, so the kind is read from the ids: it makes a
-- grant id and its first token id back to back, so their ULIDs carry the same
-- millisecond; a refresh makes a new token id for an existing grant later.
-- A token whose ULID time is within 5 ms of its grant's is the grant's first:
-- delegation when the grant's grant.created names a parentGrantId, else
-- exchange; later is refresh. This holds whatever order events arrive in and
-- whatever the archive missed (a refresh whose first token was never seen is
-- still a refresh). unknown: ids that are not ULIDs and no method (a token
-- whose ULID is more than 5 ms older than its grant's, too).
-- refresh_ratio = refresh / (exchange + delegation + refresh), NULL when the
-- agent has no token of a known kind. Consent-bundle grants get tokens
-- without any token.issued: those are not counted (the stream never shows
-- them).
WITH t AS (
    SELECT agent_id, kind
    FROM tokens
    WHERE {window(issued_at)}
        AND ($source IS NULL OR source = $source)
)
SELECT
    agent_id,
    count(*) AS tokens,
    count(*) FILTER (WHERE kind = 'exchange') AS exchange,
    count(*) FILTER (WHERE kind = 'delegation') AS delegation,
    count(*) FILTER (WHERE kind = 'refresh') AS refresh,
    count(*) FILTER (WHERE kind = 'unknown') AS unknown,
    CASE WHEN count(*) FILTER (WHERE kind <> 'unknown') > 0
        THEN count(*) FILTER (WHERE kind = 'refresh') / count(*) FILTER (WHERE kind <> 'unknown')
    END AS refresh_ratio
FROM t
WHERE $agent IS NULL OR agent_id = $agent
GROUP BY agent_id
ORDER BY tokens DESC, agent_id NULLS LAST
