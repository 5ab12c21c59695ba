"""An archive and a service state that differ in every way reconciliation looks for.

The archive holds the events of ``ARCHIVED``; :func:`service_routes` serves
the service's state as its REST API does (compliance export, consent
bundles paged by cursor, DPDP records, budget allocations, webhooks with
deliveries paged by number). ``EXPECTED`` is what reconcile must find.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ingest import migrate
from ingest.events import normalise
from ingest.rows import Received

from .scripted_rest import Answer, Route

RECEIVED = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def event(n: int, kind: str, at: str, **data: Any) -> str:
    body = {"id": f"evt_{n:04d}", "type": kind, "createdAt": at, "data": data}
    return json.dumps(body)


T0 = "2026-12-01T10:00:00.000Z"
T1 = "2026-12-01T10:05:00.000Z"
T2 = "2026-12-01T10:10:00.000Z"

ARCHIVED = [
    event(1, "grant.created", T0, grantId="g1", agentId="ag1", principalId="alice"),
    event(2, "grant.revoked", T1, grantId="g1", cascade=False),
    event(3, "grant.created", T0, grantId="g2", agentId="ag1", principalId="bob"),
    event(
        4,
        "grant.created",
        T0,
        grantId="g3",
        agentId="ag2",
        principalId="bob",
        parentGrantId="g2",
        delegationDepth=1,
    ),
    event(5, "grant.revoked", T1, grantId="g2", cascade=True),
    event(6, "grant.created", T0, grantId="g4", agentId="ag2", principalId="carol"),
    event(
        7, "consent_bundle.created", T0, bundleId="b1", agentId="ag1", grantId="g7", userId="dave"
    ),
    event(
        8, "consent_bundle.created", T0, bundleId="b2", agentId="ag1", grantId="g8", userId="erin"
    ),
    event(9, "consent_bundle.revoked", T1, bundleId="b2", revokeGrant=True),
    event(10, "dpdp.consent.created", T0, recordId="r1", grantId="g4", dataPrincipalId="carol"),
    event(11, "dpdp.consent.created", T0, recordId="r2", grantId="g1", dataPrincipalId="alice"),
    event(
        12,
        "dpdp.consent.withdrawn",
        T2,
        recordId="r2",
        reason="x",
        grantRevoked=False,
        dataDeleted=False,
    ),
    event(13, "budget.threshold", T1, grantId="g2", pct=80, remaining="10.0000"),
]

# Every active filler bundle fills the first page of 100, so the revoked ones
# are only on the second.
FILLER_BUNDLES = 100
# More deliveries than one page of 100: the missing events are on the second.
FILLER_DELIVERIES = 120


def _grant(grant_id: str, status: str, revoked_at: str | None = None) -> dict[str, Any]:
    return {
        "grantId": grant_id,
        "agentId": "ag1",
        "principalId": "p",
        "scopes": ["files:read"],
        "status": status,
        "issuedAt": T0,
        "expiresAt": "2026-12-02T10:00:00.000Z",
        "revokedAt": revoked_at,
        "delegationDepth": 0,
    }


GRANTS = [
    _grant("g1", "revoked", T1),
    _grant("g2", "revoked", T1),
    _grant("g3", "revoked", T1),
    _grant("g4", "revoked", T2),  # the archive saw no revocation
    _grant("g5", "active"),  # never seen created
    _grant("g6", "revoked", T2),  # neither created nor revoked in the archive
    _grant("g7", "revoked", T2),  # bundle b1 revoked; no event
    _grant("g8", "revoked", T1),
]


def _bundle(n: int, bundle_id: str, grant_id: str, status: str) -> dict[str, Any]:
    created = f"2026-12-01T09:{n // 60:02d}:{n % 60:02d}.000Z"
    revoked = T2 if status == "revoked" else None
    return {
        "id": bundle_id,
        "grantId": grant_id,
        "status": status,
        "createdAt": created,
        "revokedAt": revoked,
    }


BUNDLES = sorted(
    [_bundle(n + 2, f"bf{n}", f"gf{n}", "active") for n in range(FILLER_BUNDLES)]
    + [_bundle(0, "b1", "g7", "revoked"), _bundle(1, "b2", "g8", "revoked")],
    key=lambda b: b["createdAt"],
    reverse=True,
)

RECORDS = [
    {"recordId": "r1", "grantId": "g4", "status": "withdrawn", "withdrawnAt": T2},
    {"recordId": "r2", "grantId": "g1", "status": "withdrawn", "withdrawnAt": T2},
    {"recordId": "r3", "grantId": "g5", "status": "active", "withdrawnAt": None},
]

ALLOCATIONS = [
    {
        "id": "ba1",
        "grantId": "g1",
        "initialBudget": "100.0000",
        "remainingBudget": "40.0000",
        "currency": "USD",
        "createdAt": T0,
        "updatedAt": T1,
    },
    {
        "id": "ba2",
        "grantId": "g2",
        "initialBudget": "100.0000",
        "remainingBudget": "10.0000",
        "currency": "USD",
        "createdAt": T0,
        "updatedAt": T1,
    },
    {
        "id": "ba3",
        "grantId": "g4",
        "initialBudget": "100.0000",
        "remainingBudget": "80.0000",
        "currency": "USD",
        "createdAt": T0,
        "updatedAt": T1,
    },
]

DELIVERIES = [
    {
        "id": f"d{n}",
        "eventId": f"evt_{1 + n % 13:04d}",
        "eventType": "grant.created",
        "status": "delivered",
        "attempts": 1,
        "createdAt": T1,
    }
    for n in range(FILLER_DELIVERIES)
] + [
    {
        "id": "dx1",
        "eventId": "evt_9001",
        "eventType": "grant.revoked",
        "status": "failed",
        "attempts": 5,
        "createdAt": T2,
    },
    {
        "id": "dx2",
        "eventId": "evt_9001",
        "eventType": "grant.revoked",
        "status": "failed",
        "attempts": 5,
        "createdAt": T2,
    },
]

EXPECTED = {
    ("grant_not_created", "g5"),
    ("grant_not_created", "g6"),
    ("revocation_missing", "g4"),
    ("revocation_missing", "g6"),
    ("revocation_missing", "g7"),
    ("bundle_revocation_missing", "b1"),
    ("dpdp_withdrawal_missing", "r1"),
    ("budget_events_missing", "ba1"),
    ("webhook_event_missing", "evt_9001"),
}
"""(kind, subject) of every finding reconcile must record, and nothing else."""


def build_archive(url: str, frames: list[str] | None = None) -> None:
    """A migrated archive holding ``frames`` (default ``ARCHIVED``) in source ``default``."""
    migrate.upgrade(url)
    add_events(url, ARCHIVED if frames is None else frames)


def _ok(body: Any) -> Answer:
    return 200, {}, body


def _bundles(query: dict[str, str]) -> Answer:
    limit = min(int(query.get("limit", "50")), 100)
    cursor = query.get("cursor")
    rows = [b for b in BUNDLES if cursor is None or b["createdAt"] < cursor][:limit]
    body: dict[str, Any] = {"bundles": rows}
    if len(rows) == limit:
        body["nextCursor"] = rows[-1]["createdAt"]
    return _ok(body)


def _deliveries(query: dict[str, str]) -> Answer:
    page, size = int(query.get("page", "1")), min(int(query.get("pageSize", "20")), 100)
    rows = DELIVERIES[(page - 1) * size : page * size]
    return _ok({"deliveries": rows, "total": len(DELIVERIES), "page": page, "pageSize": size})


def service_routes() -> dict[str, Route]:
    """The service's REST state, as the live service shapes each answer."""
    return {
        "/v1/compliance/export/grants": lambda q: _ok(
            {"generatedAt": T2, "total": len(GRANTS), "grants": GRANTS}
        ),
        "/v1/consent-bundles": _bundles,
        "/v1/dpdp/consent-records": lambda q: _ok(
            {"records": RECORDS, "totalRecords": len(RECORDS)}
        ),
        "/v1/budget/allocations": lambda q: _ok({"allocations": ALLOCATIONS}),
        "/v1/webhooks": lambda q: _ok(
            {"webhooks": [{"id": "wh1", "url": "https://x", "events": ["grant.created"]}]}
        ),
        "/v1/webhooks/wh1/deliveries": _deliveries,
    }


CLOSING = [
    event(20, "grant.revoked", T2, grantId="g4", cascade=False),
    event(
        21,
        "dpdp.consent.withdrawn",
        T2,
        recordId="r1",
        reason="x",
        grantRevoked=True,
        dataDeleted=False,
    ),
]
"""Events that close two findings once the archive has them."""


def add_events(url: str, frames: list[str], source: str = "default") -> None:
    store = migrate.open_archive(url)
    try:
        store.write_batch(source, None, [Received(normalise(f), RECEIVED) for f in frames])
    finally:
        store.close()
