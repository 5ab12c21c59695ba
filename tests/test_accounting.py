"""Where each emitted event ended up: the pure accounting of the gap benchmark and the demo."""

from __future__ import annotations

from typing import Any

from ingest.simulator.accounting import account, category, finding_keys, found_by_reconcile


def ev(event_id: str, kind: str, **data: Any) -> dict[str, Any]:
    return {"id": event_id, "type": kind, "createdAt": "2026-12-01T00:00:00.000Z", "data": data}


def test_each_event_lands_in_the_first_category_that_holds() -> None:
    events = [
        ev("e1", "grant.created", grantId="g1"),
        ev("e2", "grant.created", grantId="g2"),
        ev("e3", "token.issued", grantId="g2"),
        ev("e4", "grant.revoked", grantId="g3"),
        ev("e5", "budget.threshold", grantId="g4"),
        ev("e6", "token.issued", grantId="g5"),
    ]
    ledger = [(e["id"], e["type"], 1000 + i, i != 2) for i, e in enumerate(events)]
    channels = {"e1": "stream", "e2": "webhook", "e3": "webhook"}
    findings = [
        ("revocation_missing", "g3", "g3"),
        ("budget_events_missing", "alloc_1", "g4"),
    ]
    counts = account(events, ledger, channels, findings)
    assert counts == {
        "stream first": 1,
        "webhook first": 1,
        "webhook only": 1,
        "reconcile only": 2,
        "lost": 1,
    }
    assert account(events, ledger, channels, findings, since_ms=1003) == {
        "reconcile only": 2,
        "lost": 1,
    }


def test_findings_name_the_fact_each_type_carries() -> None:
    keys = finding_keys(
        [
            ("grant_not_created", "g1", "g1"),
            ("revocation_missing", "g2", "g2"),
            ("bundle_revocation_missing", "b1", "g9"),
            ("dpdp_withdrawal_missing", "r1", None),
            ("webhook_event_missing", "e9", None),
        ]
    )
    assert found_by_reconcile(ev("x", "grant.created", grantId="g1"), keys)
    assert found_by_reconcile(ev("x", "consent_bundle.created", grantId="g1"), keys)
    assert found_by_reconcile(ev("x", "grant.revoked", grantId="g2"), keys)
    assert found_by_reconcile(ev("x", "anomaly.auto_revoked", revokedGrants=["g7", "g2"]), keys)
    assert found_by_reconcile(ev("x", "consent_bundle.revoked", bundleId="b1"), keys)
    assert found_by_reconcile(ev("x", "dpdp.consent.withdrawn", recordId="r1"), keys)
    assert found_by_reconcile(ev("e9", "token.issued", grantId="g5"), keys)
    # A finding about one fact says nothing about another fact of the same grant.
    assert not found_by_reconcile(ev("x", "grant.revoked", grantId="g1"), keys)
    assert not found_by_reconcile(ev("x", "token.issued", grantId="g1"), keys)
    assert not found_by_reconcile(ev("x", "anomaly.auto_revoked", revokedGrants=[]), keys)
    assert category(ev("x", "token.issued"), True, None, keys) == "lost"
