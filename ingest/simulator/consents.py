"""Consent bundles and DPDP consent records: the live service's other ways to revoke a grant.

:class:`ConsentLedger` queues these events (live envelope only), as the service emits them:

- ``consent_bundle.created {bundleId, agentId, grantId, userId}`` for a grant made with
  the bundle (no grant.created, no token.issued), maybe ``consent_bundle.synced
  {bundleId, accepted}``, then sometimes ``consent_bundle.revoked {bundleId,
  revokeGrant}``, which revokes the grant when ``revokeGrant`` is true, even one an
  anomaly revoked before;
- ``dpdp.consent.created {recordId, grantId, dataPrincipalId}`` for an existing grant,
  later maybe ``dpdp.consent.withdrawn {recordId, reason, grantRevoked, dataDeleted}``
  (no grantId; the record's grant is revoked when ``grantRevoked``, revoked already or
  not), and ``dpdp.erasure.completed {requestId, dataPrincipalId, recordsErased,
  grantsRevoked}``, which revokes the grant of every record of that data principal.

None of them cascades. Open bundles and records are kept in bounded lists; one that
falls off the end simply stays as it is.
"""

from __future__ import annotations

import random

from .grants import Grant, GrantPool, Pending
from .ids import UlidSource, second_text

_MAX_OPEN = 256
BUNDLE_TTL_MS = 24 * 3_600_000
_WITHDRAWAL_REASONS = ("no_longer_needed", "purpose_fulfilled", "user_request", "test")


class _Record:
    __slots__ = ("grant", "open", "rid")

    def __init__(self, rid: str, grant: Grant) -> None:
        self.rid = rid
        self.grant = grant
        self.open = True  # neither withdrawn nor erased


def _take(items: list[_Record] | list[tuple[str, Grant]], index: int) -> None:
    """Remove ``items[index]`` in O(1), order not kept."""
    items[index] = items[-1]  # type: ignore[assignment]
    items.pop()


class ConsentLedger:
    """Open consent bundles and DPDP records of one generator, and the events they make."""

    def __init__(self, rng: random.Random, uid: UlidSource, grants: GrantPool) -> None:
        self._rng = rng
        self._uid = uid
        self._grants = grants
        self._bundles: list[tuple[str, Grant]] = []
        self._records: list[_Record] = []
        self._by_principal: dict[str, list[_Record]] = {}
        self._principals: list[str] = []  # those with records, in order of their first
        self._watched = list(grants.watched)
        self._next_watched = len(self._watched)

    def bundle_created(self, ts: int, out: list[Pending]) -> None:
        rand = self._rng.random
        grants = self._grants
        agent = grants.agents[int(rand() * len(grants.agents))]
        user = grants.principals[int(rand() * len(grants.principals))]
        gid_ms = ts - int(rand() * 12)
        grant = Grant("grnt_" + self._uid(gid_ms), gid_ms, agent, user, (), False, 0)
        grant.alive = False  # no steps of its own: the bundle's events follow from here
        grant.expires_ms = gid_ms + BUNDLE_TTL_MS
        bid = "bundle_" + self._uid(ts)
        if len(self._bundles) >= _MAX_OPEN:
            self._bundles.pop(0)
        self._bundles.append((bid, grant))
        grants.extra_grants = [b[1] for b in self._bundles]
        data = (
            f'{{"bundleId":"{bid}","agentId":"{agent}","grantId":"{grant.gid}","userId":"{user}"}}'
        )
        out.append((ts, "consent_bundle.created", False, data))

    def bundle_followup(self, ts: int, out: list[Pending]) -> None:
        """A sync or the revocation of an open bundle (a new bundle when none is open)."""
        if not self._bundles:
            self.bundle_created(ts, out)
            return
        rand = self._rng.random
        index = int(rand() * len(self._bundles))
        bid, grant = self._bundles[index]
        if rand() < 0.4:
            data = f'{{"bundleId":"{bid}","accepted":{int(rand() * 40)}}}'
            out.append((ts, "consent_bundle.synced", False, data))
            return
        _take(self._bundles, index)
        self._grants.extra_grants = [b[1] for b in self._bundles]
        revoke = rand() < 0.7
        if revoke:
            self._grants.mark_revoked(grant, ts, "consent_bundle", "developer", len(out))
        data = f'{{"bundleId":"{bid}","revokeGrant":{"true" if revoke else "false"}}}'
        out.append((ts, "consent_bundle.revoked", False, data))

    def record_created(self, ts: int, out: list[Pending]) -> bool:
        """A DPDP consent record for an active live grant; False if there is none."""
        rand = self._rng.random
        watched = self._watched
        # Most records are for a few data principals, so an erasure often takes several.
        latest = self._grants.watched[watched[int(rand() * len(watched))]]
        candidates = [g for g in latest if not g.revoked]
        if not candidates or rand() < 0.3:
            candidates = [g for g in self._grants.pool if not g.doc]
        if not candidates:
            return False
        grant = candidates[int(rand() * len(candidates))]
        record = _Record("crec_" + self._uid(ts), grant)
        if len(self._records) >= _MAX_OPEN:
            self._records.pop(0)
        self._records.append(record)
        principal = grant.principal
        if principal not in self._by_principal:
            self._by_principal[principal] = []
            self._principals.append(principal)
        self._by_principal[principal].append(record)
        data = (
            f'{{"recordId":"{record.rid}","grantId":"{grant.gid}","dataPrincipalId":"{principal}"}}'
        )
        out.append((ts, "dpdp.consent.created", False, data))
        return True

    def record_withdrawn(self, ts: int, out: list[Pending]) -> bool:
        """Withdraw an open record; False if none is open."""
        rand = self._rng.random
        records = self._records
        while records:
            index = int(rand() * len(records))
            record = records[index]
            _take(records, index)
            if record.open:
                break
        else:
            return False
        record.open = False
        revoke = rand() < 0.7
        if revoke:
            self._grants.mark_revoked(record.grant, ts, "consent_withdrawal", "principal", len(out))
        reason = _WITHDRAWAL_REASONS[int(rand() * len(_WITHDRAWAL_REASONS))]
        data = (
            f'{{"recordId":"{record.rid}","reason":"{reason}",'
            f'"grantRevoked":{"true" if revoke else "false"},'
            f'"dataDeleted":{"true" if rand() < 0.4 else "false"}}}'
        )
        out.append((ts, "dpdp.consent.withdrawn", False, data))
        return True

    def erasure(self, ts: int, out: list[Pending]) -> bool:
        """Erase a data principal's records, revoking all their grants; False if none has any."""
        if not self._principals:
            return False
        rand = self._rng.random
        principal = self._watched[int(rand() * len(self._watched))]
        if principal not in self._by_principal:
            principal = self._principals[int(rand() * len(self._principals))]
        # The service erases every record of the principal, withdrawn or erased before too.
        records = self._by_principal[principal]
        queued = len(out)
        for record in records:
            record.open = False
            self._grants.mark_revoked(record.grant, ts, "erasure", "principal", queued)
        request = f"ER-{second_text(ts // 1000)[:4]}-{self._uid(ts)}"
        data = (
            f'{{"requestId":"{request}","dataPrincipalId":"{principal}",'
            f'"recordsErased":{len(records)},"grantsRevoked":{len(records)}}}'
        )
        out.append((ts, "dpdp.erasure.completed", False, data))
        if principal in self._grants.watched:
            self._rewatch(principal)
        return True

    def _rewatch(self, principal: str) -> None:
        """Watch another principal instead of one whose data was erased."""
        watched = self._grants.watched
        principals = self._grants.principals
        fresh = principal
        while fresh in watched:
            fresh = principals[self._next_watched % len(principals)]
            self._next_watched += 1
        del watched[principal]
        watched[fresh] = []
        self._watched[self._watched.index(principal)] = fresh
