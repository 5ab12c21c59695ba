"""The revocation rules of the producer notes, applied to a stream, independently of the simulator.

:func:`derive` reads live-envelope events in stream order and says which grants ended
revoked, when, by which path and in which event, the way an archive must ("How a grant
ends revoked" in producer-notes.md). Tests compare it with the simulator's ground
truth; it also counts the edge cases it met, so a test can check a run exercised them.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

Revoked = dict[str, tuple[str, str, str]]  # grant id -> (createdAt, via, event id)


class Derivation:
    def __init__(self) -> None:
        self.revoked: Revoked = {}
        self.cases: Counter[str] = Counter()
        self._children: dict[str, list[str]] = defaultdict(list)
        self._bundles: dict[str, str] = {}
        self._records: dict[str, str] = {}
        self._by_principal: dict[str, list[str]] = defaultdict(list)

    def read(self, event: dict[str, Any]) -> None:
        kind, data = event["type"], event["data"]
        if kind == "grant.created" and "parentGrantId" in data:
            self._children[data["parentGrantId"]].append(data["grantId"])
        elif kind == "grant.revoked":
            assert data["grantId"] not in self.revoked, "the service revokes active grants only"
            self._revoke(event, data["grantId"], "direct")
            taken = self._cascade(event, data["grantId"])
            assert data["cascade"] == (taken > 0), event
            self.cases["multi-level cascade"] += taken > 1
        elif kind == "anomaly.auto_revoked":
            for grant_id in data["revokedGrants"]:
                self._revoke(event, grant_id, "anomaly")
                children = self._children[grant_id]
                self.cases["anomaly parent with an active child"] += any(
                    c not in self.revoked for c in children
                )
        elif kind == "consent_bundle.created":
            self._bundles[data["bundleId"]] = data["grantId"]
        elif kind == "consent_bundle.revoked":
            if data["revokeGrant"]:
                self._revoke(event, self._bundles[data["bundleId"]], "consent_bundle")
            else:
                self.cases["bundle revoked, grant kept"] += 1
        else:
            self._read_dpdp(event)

    def _read_dpdp(self, event: dict[str, Any]) -> None:
        kind, data = event["type"], event["data"]
        if kind == "dpdp.consent.created":
            self._records[data["recordId"]] = data["grantId"]
            self._by_principal[data["dataPrincipalId"]].append(data["grantId"])
        elif kind == "dpdp.consent.withdrawn":
            if data["grantRevoked"]:
                self._revoke(event, self._records[data["recordId"]], "consent_withdrawal")
            else:
                self.cases["withdrawal, grant kept"] += 1
        elif kind == "dpdp.erasure.completed":
            grants = self._by_principal[data["dataPrincipalId"]]
            assert data["recordsErased"] == data["grantsRevoked"] == len(grants)
            taken = sum(self._revoke(event, g, "erasure") for g in grants)
            self.cases["erasure of several grants"] += taken > 1

    def _revoke(self, event: dict[str, Any], grant_id: str, via: str) -> bool:
        """The first revocation counts; a later one names a grant already revoked."""
        if grant_id in self.revoked:
            self.cases[f"{via} of a revoked grant"] += 1
            return False
        self.revoked[grant_id] = (event["createdAt"], via, event["id"])
        return True

    def _cascade(self, event: dict[str, Any], root: str) -> int:
        """Revoke the root's descendants through grants not revoked yet; how many it took."""
        taken = 0
        stack = list(self._children[root])
        while stack:
            grant_id = stack.pop()
            if grant_id in self.revoked:
                # The walk stops here; count it when that leaves active grants below.
                self.cases["cascade stopped at a revoked grant"] += any(
                    c not in self.revoked for c in self._children[grant_id]
                )
                continue
            self._revoke(event, grant_id, "cascade")
            taken += 1
            stack.extend(self._children[grant_id])
        return taken


def derive(events: Iterable[dict[str, Any]]) -> Derivation:
    """Revoked grants (first revocation) of a live-envelope stream, and the edge cases met."""
    derivation = Derivation()
    for event in events:
        derivation.read(event)
    return derivation
