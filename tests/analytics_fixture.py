"""A hand-built archive whose report answers are worked out in test_reports.py.

Every event goes through the real normalisation and the real store, so the
archive looks exactly as ingest would leave it. Times are in March 2026; the
window most tests use is [2026-03-02, 2026-03-05).

Grants (agent, source; what happens):

- G1 (A1, acct-a, documented envelopes): created 03-02 10:00, tokens by
  exchange 10:00 and refresh 11:00, revoked by the developer 12:00 (lives 2 h).
  Its grant.created arrives twice (one archived row).
- G2 (A1, acct-a, live envelopes): created 03-02 09:00, a token (no method),
  revoked 03-03 09:00 with no revokedBy: actor developer_or_principal, via
  direct (lives 24 h).
- G3 (A2, acct-a): created 03-01 12:00 (before the window), listed in an
  anomaly.auto_revoked at 03-03 12:00: actor system, via anomaly (lives 48 h).
- G4 (A2, acct-b): created 03-03 00:00, a token, threshold `pct` 50 at 01:00,
  documented threshold `percentage` 80 (initial 100) at 02:00, exhausted 03:00
  (3 h after creation).
- G5 (A1, acct-a): created 03-02 00:00, exhausted 03-04 00:00 without any
  threshold event (48 h).
- G6 (A1, acct-a): created 03-02 00:00, threshold 50 twice (01:00, 02:00).
- G7 (A2, acct-a): created 03-01 00:00, threshold 80 at 03-01 05:00 (outside
  the window), revoked by the principal 03-06 00:00 (outside).
- G8 (A3, acct-b): never created in the archive; revoked by the principal
  03-04 00:00 (documented envelope; its agent is unknown to the archive).
- G9 (A3, acct-a): created 03-03 06:00, revoked 03-03 07:00 with no revokedBy
  and listed in an anomaly.auto_revoked at the same instant: counted once, by
  the grant.revoked (on a tie in time the direct revocation is first).

Other events: sso.login 03-02 05:00 (acct-a), an unknown type
`passport.renewed` 03-03 05:00 (acct-b), vault.credential.stored 03-06 00:00
(outside the window), two malformed frames rejected in run 2.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from ingest import migrate
from ingest.events import normalise
from ingest.schema import ingest_runs
from ingest.store import Received

# Every named report, in the order `report --list` gives them.
REPORTS = [
    "budget-exhaustion-rate",
    "chain",
    "event-volume",
    "grant-lifetime",
    "ingest-coverage",
    "reconciliation",
    "revocations-by-actor",
    "token-issuance",
    "top-agents",
    "webhook-catches",
]

RECEIVED = datetime(2026, 3, 7, tzinfo=timezone.utc)


def _t(day: int, hour: int = 0, minute: int = 0) -> str:
    return f"2026-03-{day:02d}T{hour:02d}:{minute:02d}:00.000Z"


def live(eid: str, etype: str, when: str, **data: Any) -> str:
    return json.dumps({"id": eid, "type": etype, "createdAt": when, "data": data})


def documented(eid: str, etype: str, when: str, **data: Any) -> str:
    return json.dumps({"id": eid, "type": etype, "timestamp": when, "data": data})


SOURCE_A = [
    # G1, documented envelopes
    documented(
        "e01",
        "grant.created",
        _t(2, 10),
        grantId="G1",
        agentId="A1",
        principalId="P1",
        scopes=["files:read"],
    ),
    documented(
        "e01",
        "grant.created",
        _t(2, 10),
        grantId="G1",
        agentId="A1",
        principalId="P1",
        scopes=["files:read"],
    ),  # the same event again
    documented("e02", "token.issued", _t(2, 10), grantId="G1", tokenId="T1", method="exchange"),
    documented("e03", "token.issued", _t(2, 11), grantId="G1", tokenId="T2", method="refresh"),
    documented("e04", "grant.revoked", _t(2, 12), grantId="G1", revokedBy="developer"),
    # G2, live envelopes
    live(
        "e05",
        "grant.created",
        _t(2, 9),
        grantId="G2",
        agentId="A1",
        principalId="P2",
        scopes=["mail:send"],
        expiresAt=_t(9),
    ),
    live(
        "e06",
        "token.issued",
        _t(2, 9),
        tokenId="T3",
        grantId="G2",
        agentId="A1",
        principalId="P2",
        scopes=["mail:send"],
        expiresAt=_t(2, 10),
    ),
    live("e07", "grant.revoked", _t(3, 9), grantId="G2", cascade=False),
    # G3
    live(
        "e08",
        "grant.created",
        _t(1, 12),
        grantId="G3",
        agentId="A2",
        principalId="P1",
        scopes=["crm:read"],
    ),
    live(
        "e09",
        "anomaly.auto_revoked",
        _t(3, 12),
        agentId="A2",
        reason="velocity_spike",
        revokedGrants=["G3"],
    ),
    # G5
    live(
        "e10",
        "grant.created",
        _t(2),
        grantId="G5",
        agentId="A1",
        principalId="P3",
        scopes=["budget:spend"],
    ),
    live("e11", "budget.exhausted", _t(4), grantId="G5", remaining="0"),
    # G6
    live(
        "e12",
        "grant.created",
        _t(2),
        grantId="G6",
        agentId="A1",
        principalId="P3",
        scopes=["budget:spend"],
    ),
    live("e13", "budget.threshold", _t(2, 1), grantId="G6", pct=50, remaining="40.00"),
    live("e14", "budget.threshold", _t(2, 2), grantId="G6", pct=50, remaining="35.00"),
    # G7
    live(
        "e15",
        "grant.created",
        _t(1),
        grantId="G7",
        agentId="A2",
        principalId="P2",
        scopes=["budget:spend"],
    ),
    live("e16", "budget.threshold", _t(1, 5), grantId="G7", pct=80, remaining="5.00"),
    documented("e17", "grant.revoked", _t(6), grantId="G7", revokedBy="principal"),
    # G9
    live(
        "e18",
        "grant.created",
        _t(3, 6),
        grantId="G9",
        agentId="A3",
        principalId="P1",
        scopes=["files:read"],
    ),
    live("e19", "grant.revoked", _t(3, 7), grantId="G9", cascade=False),
    live(
        "e20",
        "anomaly.auto_revoked",
        _t(3, 7),
        agentId="A3",
        reason="geo_anomaly",
        revokedGrants=["G9"],
    ),
    # not about grants
    live(
        "e21",
        "sso.login",
        _t(2, 5),
        principalId="P1",
        provider="okta",
        method="saml",
        sessionId="S1",
    ),
    live(
        "e22",
        "vault.credential.stored",
        _t(6),
        credentialId="C1",
        principalId="P1",
        service="github",
        credentialType="oauth2",
    ),
]

SOURCE_B = [
    # G4: pct (live) and percentage (documented)
    live(
        "e30",
        "grant.created",
        _t(3),
        grantId="G4",
        agentId="A2",
        principalId="P4",
        scopes=["budget:spend"],
    ),
    live(
        "e31",
        "token.issued",
        _t(3),
        tokenId="T4",
        grantId="G4",
        agentId="A2",
        principalId="P4",
        scopes=["budget:spend"],
        expiresAt=_t(3, 1),
    ),
    live("e32", "budget.threshold", _t(3, 1), grantId="G4", pct=50, remaining="10.00"),
    documented(
        "e33", "budget.threshold", _t(3, 2), grantId="G4", percentage=80, remaining=20, initial=100
    ),
    documented("e34", "budget.exhausted", _t(3, 3), grantId="G4", initial=100),
    # G8: created before the archive began
    documented("e35", "grant.revoked", _t(4), grantId="G8", revokedBy="principal"),
    # an event type this version has never heard of
    live("e36", "passport.renewed", _t(3, 5), passportId="PP1", agentId="A3"),
]

MALFORMED = ['{"id": "bad1", "type": "grant.created"', '{"type": "token.issued", "data": {}}']

# (id, source, started, finished, outcome, received, inserted)
RUNS = [
    (1, "acct-a", (2, 0), (2, 1), "idle", 10, 10),
    (2, "acct-a", (2, 3), (2, 4), "idle", 15, 13),
    (3, "acct-b", (2, 0, 30), (2, 0, 45), "max_runtime", 7, 7),
]


def _dt(parts: tuple[int, ...]) -> datetime:
    day, hour, *rest = parts
    return datetime(2026, 3, day, hour, *(rest or [0]), tzinfo=timezone.utc)


def build_archive(url: str) -> None:
    """Create the schema and write the hand-built events, runs and rejections."""
    migrate.upgrade(url)
    store = migrate.open_archive(url)
    try:
        with store.engine.begin() as conn:
            for rid, source, started, finished, outcome, received, inserted in RUNS:
                conn.execute(
                    ingest_runs.insert().values(
                        id=rid,
                        source=source,
                        started_at=_dt(started),
                        finished_at=_dt(finished),
                        outcome=outcome,
                        exit_code=0,
                        received=received,
                        inserted=inserted,
                    )
                )
            if conn.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT setval(pg_get_serial_sequence('ingest_runs', 'id'), 3)")
                )
        store.write_batch("acct-a", 1, [Received(normalise(f), RECEIVED) for f in SOURCE_A])
        store.write_batch("acct-b", 3, [Received(normalise(f), RECEIVED) for f in SOURCE_B])
        store.write_batch("acct-a", 2, [Received(normalise(f), RECEIVED) for f in MALFORMED])
    finally:
        store.close()
