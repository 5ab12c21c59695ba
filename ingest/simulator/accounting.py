"""Where each event the simulator emitted ended up: archived by which channel, known from
reconcile only, or lost. Pure: the simulator's ledger and the archive's rows in, counts out.

Each event is counted once, in the first of:

- ``stream first``: archived, the stream delivered it first (``events.channel``);
- ``webhook first``: archived, the receiver was first although a stream was sent it too;
- ``webhook only``: archived by the receiver, no stream was ever sent it;
- ``reconcile only``: not archived, but a reconcile finding names it or the fact it
  carries (its grant created or revoked, its webhook delivery, its grant's budget, its
  consent bundle or DPDP record);
- ``lost``: none of these.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

CATEGORIES = ("stream first", "webhook first", "webhook only", "reconcile only", "lost")

Ledger = tuple[str, str, int, bool]
"""One emitted event as :meth:`Simulator.ledger` gives it: id, type, Unix ms, streamed."""


def finding_keys(findings: Iterable[tuple[str, str, str | None]]) -> set[tuple[str, str]]:
    """The ``(kind, subject)`` and ``(kind, grant)`` pairs of ``(kind, subject, grant)`` rows."""
    keys: set[tuple[str, str]] = set()
    for kind, subject, grant in findings:
        keys.add((kind, subject))
        if grant is not None:
            keys.add((kind, grant))
    return keys


def found_by_reconcile(event: Mapping[str, Any], keys: set[tuple[str, str]]) -> bool:
    """Whether a finding (see :func:`finding_keys`) names ``event`` or the fact it carries."""
    if ("webhook_event_missing", str(event.get("id"))) in keys:
        return True
    data = event.get("data") or {}
    kind = str(event.get("type"))
    grant = str(data.get("grantId"))
    facts: list[tuple[str, str]] = []
    if kind in ("grant.created", "consent_bundle.created"):
        facts.append(("grant_not_created", grant))
    elif kind == "grant.revoked":
        facts.append(("revocation_missing", grant))
    elif kind == "anomaly.auto_revoked":
        facts.extend(("revocation_missing", str(g)) for g in data.get("revokedGrants") or [])
    elif kind == "consent_bundle.revoked":
        facts.append(("bundle_revocation_missing", str(data.get("bundleId"))))
    elif kind == "dpdp.consent.withdrawn":
        facts.append(("dpdp_withdrawal_missing", str(data.get("recordId"))))
    elif kind.startswith("budget."):
        facts.append(("budget_events_missing", grant))
    return any(fact in keys for fact in facts)


def category(
    event: Mapping[str, Any], streamed: bool, channel: str | None, keys: set[tuple[str, str]]
) -> str:
    """The category (one of :data:`CATEGORIES`) of one emitted event."""
    if channel == "stream":
        return "stream first"
    if channel == "webhook":
        return "webhook first" if streamed else "webhook only"
    if found_by_reconcile(event, keys):
        return "reconcile only"
    return "lost"


def account(
    events: Iterable[Mapping[str, Any]],
    ledger: Iterable[Ledger],
    channels: Mapping[str, str],
    findings: Iterable[tuple[str, str, str | None]],
    since_ms: float = 0.0,
) -> Counter[str]:
    """Count every event emitted at or after ``since_ms`` in its category.

    ``events`` and ``ledger`` are the simulator's, in the same order;
    ``channels`` maps each archived event id to its channel.
    """
    keys = finding_keys(findings)
    counts: Counter[str] = Counter()
    for event, (event_id, _, ts_ms, streamed) in zip(events, ledger, strict=True):
        if ts_ms >= since_ms:
            counts[category(event, streamed, channels.get(event_id), keys)] += 1
    return counts
