"""The service-side state behind the simulator's REST endpoints, folded from its events.

The live service keeps grants, consent bundles, DPDP consent records and budget
allocations in its database and publishes events as they change. Here the state is
rebuilt from the simulator's own event log, with the service's rules: a cascade revokes
the not-yet-revoked descendants, an anomaly exactly its list, and a consent-bundle
revocation, DPDP withdrawal or erasure overwrites the grant's revoked time as the
service's ``UPDATE grants`` does. Budget allocations have no event; the generator notes
them (:attr:`~.grants.GrantPool.allocations`) and the debits' events update them.

A consent bundle's grant has no grant.created: the service creates it with the bundle,
with the bundle's scopes and its offline expiry. Neither is in consent_bundle.created,
so the state gives it one of the generator's scope sets, chosen by its id (the same on
every run), and the generator's bundle lifetime from the grant id's time.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

from .consents import BUNDLE_TTL_MS
from .generator import TYPE_CODES
from .history import History
from .ids import format_ms, parse_since_ms, ulid_ms
from .plans import SCOPE_SETS

_FOLDED = frozenset(
    TYPE_CODES[name]
    for name in (
        "grant.created", "grant.revoked", "anomaly.auto_revoked", "budget.threshold",
        "budget.exhausted", "consent_bundle.created", "consent_bundle.synced",
        "consent_bundle.revoked",
        "dpdp.consent.created", "dpdp.consent.withdrawn", "dpdp.erasure.completed",
    )
)  # fmt: skip


@dataclass
class GrantRow:
    grant_id: str
    agent_id: str
    principal_id: str
    scopes: list[str]
    issued_at: str
    expires_at: str | None
    depth: int = 0
    parent: str | None = None
    status: str = "active"
    revoked_at: str | None = None
    children: list[str] = field(default_factory=list)


@dataclass
class Allocation:
    id: str
    grant_id: str
    initial_c: int
    remaining_c: int
    created_at: str
    updated_at: str


def cents_text(cents: int) -> str:
    """A NUMERIC(18,4) amount as the service's driver returns it: "25.0000"."""
    return f"{cents // 100}.{cents % 100:02d}00"


def parse_cents(text: object) -> int:
    return round(float(str(text)) * 100)


class ServiceState:
    """Grants, bundles, DPDP records and allocations as the service would hold them."""

    def __init__(self, history: History, allocations: list[tuple[str, int, int]]) -> None:
        self._history = history
        self._noted = allocations  # (grant id, ms, initial cents), appended by the generator
        self._lock = threading.Lock()
        self._cursor = 0
        self._allocated = 0
        self.grants: dict[str, GrantRow] = {}
        self.bundles: dict[str, dict[str, Any]] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.allocations: dict[str, Allocation] = {}

    def catch_up(self) -> threading.Lock:
        """Fold every event logged so far; returns the lock to read the state under."""
        history = self._history
        with self._lock:
            count = history.count
            # Every allocation is noted before its grant's events reach the log.
            self._note_allocations()
            types = history.types
            for index in range(self._cursor, count):
                if types[index] in _FOLDED:
                    self._fold(history.envelope(index))
            self._cursor = count
        return self._lock

    def _note_allocations(self) -> None:
        noted = self._noted
        while self._allocated < len(noted):
            grant_id, ms, initial_c = noted[self._allocated]
            self._allocated += 1
            stamp = format_ms(ms)
            alloc_id = "bdg_" + grant_id.removeprefix("grnt_")
            self.allocations[grant_id] = Allocation(
                alloc_id, grant_id, initial_c, initial_c, stamp, stamp
            )

    # Kept whole: one dispatch over the event types the service's tables change with.
    def _fold(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        data = event["data"]
        stamp = event.get("createdAt") or event.get("timestamp") or ""
        if kind == "grant.created":
            self._created(data, stamp)
        elif kind == "grant.revoked":
            grant = self.grants.get(data["grantId"])
            if grant is not None and grant.status == "active":
                self._revoke(grant, stamp, overwrite=False)
                if data.get("cascade"):
                    self._cascade(grant, stamp)
        elif kind == "anomaly.auto_revoked":
            for grant_id in data.get("revokedGrants", []):
                if grant_id in self.grants and self.grants[grant_id].status == "active":
                    self._revoke(self.grants[grant_id], stamp, overwrite=False)
        elif kind in ("budget.threshold", "budget.exhausted"):
            allocation = self.allocations.get(data["grantId"])
            if allocation is not None and "remaining" in data:
                allocation.remaining_c = max(0, parse_cents(data["remaining"]))
                allocation.updated_at = stamp
        elif kind == "consent_bundle.created":
            self._bundle(data, stamp)
        elif kind == "consent_bundle.synced":
            bundle = self.bundles.get(data["bundleId"])
            if bundle is not None:
                bundle["auditEntryCount"] += int(data.get("accepted", 0))
                bundle["lastSyncAt"] = stamp
        elif kind == "consent_bundle.revoked":
            bundle = self.bundles.get(data["bundleId"])
            if bundle is not None and bundle["status"] == "active":
                bundle["status"], bundle["revokedAt"] = "revoked", stamp
                if data.get("revokeGrant"):
                    self._revoke_id(bundle["grantId"], stamp)
        elif kind == "dpdp.consent.created":
            grant = self.grants.get(data["grantId"])
            self.records[data["recordId"]] = {
                "recordId": data["recordId"], "grantId": data["grantId"],
                "dataPrincipalId": data["dataPrincipalId"],
                "scopes": [] if grant is None else list(grant.scopes), "status": "active",
                "consentGivenAt": stamp, "withdrawnAt": None, "createdAt": stamp,
            }  # fmt: skip
        elif kind == "dpdp.consent.withdrawn":
            record = self.records.get(data["recordId"])
            if record is not None:
                record["status"], record["withdrawnAt"] = "withdrawn", stamp
                if data.get("grantRevoked"):
                    self._revoke_id(record["grantId"], stamp)
        elif kind == "dpdp.erasure.completed":
            for record in self.records.values():
                if record["dataPrincipalId"] == data["dataPrincipalId"]:
                    record["status"], record["withdrawnAt"] = "erased", stamp
                    self._revoke_id(record["grantId"], stamp)

    def _created(self, data: dict[str, Any], stamp: str) -> None:
        parent = data.get("parentGrantId")
        grant = GrantRow(
            data["grantId"], data.get("agentId", ""), data.get("principalId", ""),
            list(data.get("scopes", [])), stamp, data.get("expiresAt"),
            int(data.get("delegationDepth", 0)), parent,
        )  # fmt: skip
        self.grants[grant.grant_id] = grant
        if parent in self.grants:
            self.grants[parent].children.append(grant.grant_id)

    def _bundle(self, data: dict[str, Any], stamp: str) -> None:
        grant_id = data["grantId"]
        scopes = list(SCOPE_SETS[zlib.crc32(grant_id.encode("utf-8")) % len(SCOPE_SETS)])
        made_ms = ulid_ms(grant_id.removeprefix("grnt_")) or parse_since_ms(stamp)
        expires = format_ms(made_ms + BUNDLE_TTL_MS)
        self.bundles[data["bundleId"]] = {
            "id": data["bundleId"], "agentId": data["agentId"], "grantId": grant_id,
            "userId": data["userId"], "scopes": scopes, "status": "active", "deviceId": None,
            "devicePlatform": None, "offlineTTL": f"{BUNDLE_TTL_MS // 3_600_000}h",
            "offlineExpiresAt": expires, "checkpointAt": format_ms(made_ms),
            "auditEntryCount": 0, "lastSyncAt": None, "createdAt": stamp, "revokedAt": None,
        }  # fmt: skip
        if grant_id not in self.grants:
            # The bundle's grant is created with it, without a grant.created.
            self.grants[grant_id] = GrantRow(
                grant_id, data["agentId"], data["userId"], scopes, stamp, expires
            )

    def _revoke_id(self, grant_id: str, stamp: str) -> None:
        grant = self.grants.get(grant_id)
        if grant is not None:
            self._revoke(grant, stamp, overwrite=True)

    @staticmethod
    def _revoke(grant: GrantRow, stamp: str, overwrite: bool) -> None:
        if grant.status == "revoked" and not overwrite:
            return
        grant.status, grant.revoked_at = "revoked", stamp

    def _cascade(self, root: GrantRow, stamp: str) -> None:
        todo = list(root.children)
        while todo:
            grant = self.grants[todo.pop()]
            if grant.status == "active":
                self._revoke(grant, stamp, overwrite=False)
                todo.extend(grant.children)
