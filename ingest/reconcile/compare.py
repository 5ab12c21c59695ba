"""The comparison: service records and what the archive knows in, findings out. Pure.

Each finding is an observation: what one endpoint showed at one time that
the archive has no event for. Kinds:

- ``grant_not_created``: a grant the service lists that no grant.created (or
  consent_bundle.created) in the archive created.
- ``revocation_missing``: a grant the service shows revoked that no archived
  event revoked (by the stream's rules).
- ``bundle_revocation_missing``: a consent bundle the service shows revoked
  without an archived consent_bundle.revoked.
- ``dpdp_withdrawal_missing``: a DPDP consent record the service shows
  withdrawn without an archived dpdp.consent.withdrawn.
- ``budget_events_missing``: an allocation at least half spent (the level
  at which every debit emits a budget event) whose grant has no archived
  budget event.
- ``webhook_event_missing``: a webhook delivery whose event id no archived
  event has.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from ..timestamps import TimestampError, parse_timestamp
from .archive import ArchiveKnowledge

GRANTS_ENDPOINT = "/v1/compliance/export/grants"
BUNDLES_ENDPOINT = "/v1/consent-bundles"
DPDP_ENDPOINT = "/v1/dpdp/consent-records"
BUDGET_ENDPOINT = "/v1/budget/allocations"
WEBHOOKS_ENDPOINT = "/v1/webhooks"

KINDS = (
    "grant_not_created",
    "revocation_missing",
    "bundle_revocation_missing",
    "dpdp_withdrawal_missing",
    "budget_events_missing",
    "webhook_event_missing",
)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the service's state shows that the archive lacks."""

    kind: str
    endpoint: str
    observed_at: datetime
    subject_id: str
    grant_id: str | None = None
    service_status: str | None = None
    service_at: datetime | None = None
    detail: str | None = None


def _text(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value if isinstance(value, str) and value else None


def _time(record: Mapping[str, Any], key: str) -> datetime | None:
    value = _text(record, key)
    if value is None:
        return None
    try:
        return parse_timestamp(value)
    except TimestampError:
        return None


def grant_findings(
    grants: Iterable[Mapping[str, Any]], known: ArchiveKnowledge, at: datetime
) -> list[Finding]:
    """Grants never seen created, and revoked grants the archive has no revocation for."""
    found = []
    for grant in grants:
        grant_id = _text(grant, "grantId")
        if grant_id is None:
            continue
        status = _text(grant, "status")
        detail = json.dumps(
            {k: grant.get(k) for k in ("agentId", "principalId", "issuedAt", "expiresAt")},
            sort_keys=True,
        )
        common = dict(grant_id=grant_id, service_status=status, detail=detail)
        if grant_id not in known.created:
            issued = _time(grant, "issuedAt")
            found.append(
                Finding(
                    "grant_not_created", GRANTS_ENDPOINT, at, grant_id, service_at=issued, **common
                )
            )
        if status == "revoked" and grant_id not in known.revoked:
            revoked_at = _time(grant, "revokedAt")
            found.append(
                Finding(
                    "revocation_missing",
                    GRANTS_ENDPOINT,
                    at,
                    grant_id,
                    service_at=revoked_at,
                    **common,
                )
            )
    return found


def bundle_findings(
    bundles: Iterable[Mapping[str, Any]], known: ArchiveKnowledge, at: datetime
) -> list[Finding]:
    """Revoked consent bundles whose revocation the archive did not see."""
    return [
        Finding(
            "bundle_revocation_missing",
            BUNDLES_ENDPOINT,
            at,
            bundle_id,
            _text(bundle, "grantId"),
            "revoked",
            _time(bundle, "revokedAt"),
        )
        for bundle in bundles
        if (bundle_id := _text(bundle, "id")) is not None
        and bundle.get("status") == "revoked"
        and bundle_id not in known.bundles_revoked
    ]


def dpdp_findings(
    records: Iterable[Mapping[str, Any]], known: ArchiveKnowledge, at: datetime
) -> list[Finding]:
    """Withdrawn DPDP consent records whose withdrawal the archive did not see."""
    return [
        Finding(
            "dpdp_withdrawal_missing",
            DPDP_ENDPOINT,
            at,
            record_id,
            _text(record, "grantId"),
            "withdrawn",
            _time(record, "withdrawnAt"),
        )
        for record in records
        if (record_id := _text(record, "recordId")) is not None
        and record.get("status") == "withdrawn"
        and record_id not in known.records_withdrawn
    ]


def _amount(value: Any) -> Decimal | None:
    try:
        return Decimal(str(value)) if value is not None else None
    except InvalidOperation:
        return None


def budget_findings(
    allocations: Iterable[Mapping[str, Any]], known: ArchiveKnowledge, at: datetime
) -> list[Finding]:
    """Allocations at least half spent whose grant has no budget event in the archive."""
    found = []
    for allocation in allocations:
        grant_id = _text(allocation, "grantId")
        initial = _amount(allocation.get("initialBudget"))
        remaining = _amount(allocation.get("remainingBudget"))
        if grant_id is None or initial is None or remaining is None or initial <= 0:
            continue
        if remaining * 2 > initial or grant_id in known.budget_grants:
            continue
        status = "exhausted" if remaining <= 0 else "spent_50"
        detail = json.dumps(
            {"initialBudget": str(initial), "remainingBudget": str(remaining)}, sort_keys=True
        )
        subject = _text(allocation, "id") or grant_id
        updated = _time(allocation, "updatedAt")
        found.append(
            Finding(
                "budget_events_missing",
                BUDGET_ENDPOINT,
                at,
                subject,
                grant_id,
                status,
                updated,
                detail,
            )
        )
    return found


def delivery_findings(
    deliveries: Iterable[tuple[str, Mapping[str, Any]]], missing: set[str], at: datetime
) -> list[Finding]:
    """Deliveries ``(endpoint, delivery)`` whose event id is in ``missing``, once per event."""
    found: dict[str, Finding] = {}
    for endpoint, delivery in deliveries:
        event_id = _text(delivery, "eventId")
        if event_id is None or event_id not in missing or event_id in found:
            continue
        detail = json.dumps({"eventType": delivery.get("eventType")}, sort_keys=True)
        found[event_id] = Finding(
            "webhook_event_missing",
            endpoint,
            at,
            event_id,
            None,
            _text(delivery, "status"),
            _time(delivery, "createdAt"),
            detail,
        )
    return list(found.values())
