"""What the archive knows, as far as reconciliation needs it: read once per run.

Grants created (grant.created, or a consent-bundle grant's
consent_bundle.created), grants revoked by the stream's rules (the
producer's: a direct grant.revoked, its cascade to descendants not already
revoked, anomaly.auto_revoked, a consent-bundle revoke, a DPDP withdrawal or
erasure), the bundles and consent records whose revocation the archive saw,
and the grants with budget events. Only the events that can say one of
these are read.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..schema import events
from ..timestamps import utc

_RULE_TYPES = (
    "grant.revoked",
    "anomaly.auto_revoked",
    "consent_bundle.created",
    "consent_bundle.revoked",
    "dpdp.consent.created",
    "dpdp.consent.withdrawn",
    "dpdp.erasure.completed",
)
_BUDGET_TYPES = ("budget.threshold", "budget.exhausted")
_ID_CHUNK = 500


@dataclass
class ArchiveKnowledge:
    """The grants, bundles and consent records the archive has events for."""

    created: set[str] = field(default_factory=set)
    revoked: dict[str, datetime] = field(default_factory=dict)
    bundles_revoked: set[str] = field(default_factory=set)
    records_withdrawn: set[str] = field(default_factory=set)
    budget_grants: set[str] = field(default_factory=set)


def _data(payload: str) -> dict[str, Any]:
    try:
        body = json.loads(payload).get("data")
    except (ValueError, AttributeError):
        return {}
    return body if isinstance(body, dict) else {}


def _aware(at: datetime) -> datetime:
    value = utc(at)
    assert value is not None  # occurred_at is NOT NULL
    return value


def read_knowledge(conn: Connection, source: str) -> ArchiveKnowledge:
    """What the archive's events of ``source`` say (see the module docstring)."""
    known = ArchiveKnowledge()
    mine = events.c.source == source
    created = sa.select(events.c.grant_id).where(
        mine, events.c.type == "grant.created", events.c.grant_id.is_not(None)
    )
    known.created.update(conn.scalars(created))
    budget = sa.select(events.c.grant_id).where(
        mine, events.c.type.in_(_BUDGET_TYPES), events.c.grant_id.is_not(None)
    )
    known.budget_grants.update(conn.scalars(budget))
    parents = sa.select(events.c.grant_id, events.c.payload).where(
        mine, events.c.type == "grant.created", events.c.payload.contains("parentGrantId")
    )
    children: dict[str, set[str]] = defaultdict(set)
    for grant_id, payload in conn.execute(parents):
        parent = _data(payload).get("parentGrantId")
        if isinstance(parent, str) and grant_id:
            children[parent].add(grant_id)
    rows = conn.execute(
        sa.select(events.c.type, events.c.occurred_at, events.c.payload)
        .where(mine, events.c.type.in_(_RULE_TYPES))
        .order_by(events.c.occurred_at, events.c.id)
    )
    facts = [(kind, _aware(at), _data(payload)) for kind, at, payload in rows]
    _apply_rules(known, facts, children)
    return known


def _apply_rules(
    known: ArchiveKnowledge,
    facts: list[tuple[str, datetime, dict[str, Any]]],
    children: dict[str, set[str]],
) -> None:
    """Fill ``known`` from the revocation facts, in time order."""
    bundles: dict[str, str] = {}
    records: dict[str, tuple[str, str | None, datetime]] = {}
    cascades: list[tuple[datetime, str]] = []
    revoke = known.revoked
    for kind, at, data in facts:
        grant = data.get("grantId")
        if kind == "consent_bundle.created" and isinstance(grant, str):
            known.created.add(grant)
            bundles[str(data.get("bundleId"))] = grant
        elif kind == "dpdp.consent.created" and isinstance(grant, str):
            records[str(data.get("recordId"))] = (grant, data.get("dataPrincipalId"), at)
    for kind, at, data in facts:
        targets: Iterable[Any] = ()
        if kind == "grant.revoked":
            targets = [data.get("grantId")]
            if data.get("cascade") is True and isinstance(data.get("grantId"), str):
                cascades.append((at, data["grantId"]))
        elif kind == "anomaly.auto_revoked" and isinstance(data.get("revokedGrants"), list):
            targets = data["revokedGrants"]
        elif kind == "consent_bundle.revoked":
            known.bundles_revoked.add(str(data.get("bundleId")))
            if data.get("revokeGrant"):
                targets = [bundles.get(str(data.get("bundleId")))]
        elif kind == "dpdp.consent.withdrawn":
            known.records_withdrawn.add(str(data.get("recordId")))
            if data.get("grantRevoked") is True:
                targets = [records.get(str(data.get("recordId")), (None,))[0]]
        elif kind == "dpdp.erasure.completed":
            who = data.get("dataPrincipalId")
            targets = [g for g, p, when in records.values() if p == who and when <= at]
        for grant_id in targets:
            if isinstance(grant_id, str) and grant_id not in revoke:
                revoke[grant_id] = at
    for at, root in sorted(cascades):
        _cascade(revoke, children, root, at)


def _cascade(
    revoked: dict[str, datetime], children: dict[str, set[str]], root: str, at: datetime
) -> None:
    """Revoke ``root``'s descendants at ``at``, not walking past grants revoked before it."""
    todo = list(children.get(root, ()))
    seen: set[str] = set()
    while todo:
        grant_id = todo.pop()
        if grant_id in seen:
            continue
        seen.add(grant_id)
        earlier = revoked.get(grant_id)
        if earlier is not None and earlier < at:
            continue
        revoked[grant_id] = at if earlier is None else min(earlier, at)
        todo.extend(children.get(grant_id, ()))


def data_principals(conn: Connection, source: str) -> set[str]:
    """The data principals of the archived ``dpdp.consent.created`` events of ``source``."""
    created = sa.select(events.c.principal_id).where(
        events.c.source == source,
        events.c.type == "dpdp.consent.created",
        events.c.principal_id.is_not(None),
    )
    return set(conn.scalars(created.distinct()))


def missing_event_ids(conn: Connection, ids: Iterable[str]) -> set[str]:
    """Those of ``ids`` that no archived event has (of any source: ids are global)."""
    wanted = sorted(set(ids))
    present: set[str] = set()
    for start in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[start : start + _ID_CHUNK]
        present.update(conn.scalars(sa.select(events.c.id).where(events.c.id.in_(chunk))))
    return set(wanted) - present
