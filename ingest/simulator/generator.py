"""The deterministic event generator: per seed, the same events in the same order.

:class:`EventFactory` interleaves grant lifecycles (:mod:`.grants`) with consent bundles
and DPDP records (:mod:`.consents`) and the other events the live service publishes, and
renders them, column-wise, straight to SSE frame text: skipping dict building and JSON
encoding is what makes a million-event backlog take seconds rather than a minute.
:func:`generate_events` is the same sequence as parsed envelopes, and the simulator's
backlog is that sequence for its seed and envelope; :func:`ground_truth` is what happened
in it (:mod:`.truth`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from .consents import ConsentLedger
from .grants import GrantPool, Pending, compact_json
from .ids import MILLIS, PAIRS, UlidSource, datetime_to_ms, second_text, ulid_time_head
from .plans import SCOPE_SETS, PlanLibrary
from .truth import GroundTruth, TruthLog, collect

ENVELOPES: tuple[str, ...] = ("live", "documented", "mixed")
EVENT_TYPES: tuple[str, ...] = (
    "grant.created",
    "grant.revoked",
    "token.issued",
    "budget.threshold",
    "budget.exhausted",
    "anomaly.auto_revoked",
    "vault.credential.stored",
    "sso.login",
    "passport.issued",
    "consent_bundle.created",
    "consent_bundle.synced",
    "consent_bundle.revoked",
    "dpdp.consent.created",
    "dpdp.consent.withdrawn",
    "dpdp.erasure.completed",
)
TYPE_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}

_FIRST_NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "kim", "leo", "mallory", "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent",
    "uma", "victor", "wendy", "xavier", "yara", "zane", "amara", "bruno", "chen", "dmitri",
    "elif", "farah", "goran", "hana", "ines", "jonas", "kofi", "lena", "mateo", "noor",
    "olga", "priya", "rafael", "sofia", "tariq", "ursula", "vikram", "wei", "yusuf", "zara",
)  # fmt: skip
_VAULT_SERVICES = ("github", "google", "slack", "stripe", "notion", "salesforce")
_SSO_PROTOCOLS = ("saml", "oidc", "oidc")
_PASSPORT_CATEGORIES = ('["inference"]', '["inference","compute"]', '["data"]', '["payments"]')


class Batch:
    """Parallel columns of freshly generated events, appended to the history in one go."""

    __slots__ = ("codes", "frames", "ts")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.codes: list[int] = []
        self.frames: list[str] = []


class EventFactory:
    """Deterministic (per seed) stream of interleaved grant lifecycles and other events."""

    def __init__(self, seed: int, envelope: str, frame_ids: bool = False) -> None:
        if envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}, got {envelope!r}")
        rng = random.Random(seed)
        self._rng = rng
        self._envelope = envelope
        self._frame_ids = frame_ids
        # Separate streams, so event ids do not depend on how generation is batched.
        self._uid = UlidSource(random.Random(f"grantex-entity-ids-{seed}"))
        self._event_ids = UlidSource(random.Random(f"grantex-event-ids-{seed}"))
        self._pending: list[Pending] = []
        agent_epoch = 1_735_689_600_000  # 2025-01-01: agents were registered long ago
        self._agents = [
            "ag_" + self._uid(agent_epoch + rng.randrange(300 * 86_400_000)) for _ in range(36)
        ]
        principals = [f"user_{name}" for name in _FIRST_NAMES]
        while len(principals) < 320:
            name = _FIRST_NAMES[rng.randrange(len(_FIRST_NAMES))]
            principals.append(f"user_{name}{rng.randrange(10, 1000)}")
        self._principals = principals
        self._scopes_json = {s: compact_json(list(s)) for s in SCOPE_SETS}
        self._sso = [("sso_" + self._uid(agent_epoch + i), p) for i, p in enumerate(_SSO_PROTOCOLS)]
        self._grants = GrantPool(
            rng, self._uid, envelope, self._agents, principals, self._scopes_json,
            PlanLibrary(seed),
        )  # fmt: skip
        self._ledger = ConsentLedger(rng, self._uid, self._grants)

    def record_truth(self) -> TruthLog:
        """Start noting revocations and token kinds (before the first event)."""
        log = self._grants.truth = TruthLog()
        return log

    def record_allocations(self) -> list[tuple[str, int, int]]:
        """Start noting budget allocations (before the first event): no event shows them."""
        noted: list[tuple[str, int, int]] = []
        self._grants.allocations = noted
        return noted

    def emit(self, ts: int, room: int) -> int:
        """Queue the next 1 or 2 events (never more than ``room``), stamped ``ts``.

        Two events come from one call only for a grant.created/token.issued pair, which
        the live service publishes in the same millisecond and sometimes in the "wrong"
        order. Returns the number queued; :meth:`flush` renders them.
        """
        out = self._pending
        before = len(out)
        r = self._rng.random()
        grants = self._grants
        pool = grants.pool
        size = len(pool)
        if r < 0.05:
            self._other(ts, out)
        elif size < 4 or (size < 12 and r < 0.25):
            grants.new_grant(ts, room, out)
        elif not grants.advance(pool[int(self._rng.random() * size)], ts, out):
            # That grant only has refreshes left, none due yet: another grant starts.
            grants.new_grant(ts, room, out)
        return len(out) - before

    def flush(self, batch: Batch) -> None:
        """Render the queued events to SSE frames, appending them to ``batch``."""
        pending = self._pending
        if not pending:
            return
        # Rendering is done column-wise in comprehensions: per-event Python overhead is
        # what bounds how fast a multi-million-event backlog can be generated.
        sec_text = second_text
        rand = self._event_ids.take(len(pending))
        head = ulid_time_head
        pairs = PAIRS
        millis = MILLIS
        if self._frame_ids:
            frames = [
                f'id: evt_{head(ts >> 10)}{pairs[ts & 1023]}{rid}\ndata: {{"id":"evt_'
                f'{head(ts >> 10)}{pairs[ts & 1023]}{rid}","type":"{typ}",'
                f'"{"timestamp" if doc else "createdAt"}":"{sec_text(ts // 1000)}'
                f'{millis[ts % 1000]}","data":{data}}}\n\n'
                for (ts, typ, doc, data), rid in zip(pending, rand, strict=True)
            ]
        else:
            frames = [
                f'data: {{"id":"evt_{head(ts >> 10)}{pairs[ts & 1023]}{rid}","type":"{typ}",'
                f'"{"timestamp" if doc else "createdAt"}":"{sec_text(ts // 1000)}'
                f'{millis[ts % 1000]}","data":{data}}}\n\n'
                for (ts, typ, doc, data), rid in zip(pending, rand, strict=True)
            ]
        batch.frames.extend(frames)
        batch.ts.extend([record[0] for record in pending])
        codes = TYPE_CODES
        batch.codes.extend([codes[record[1]] for record in pending])
        self._grants.flushed += len(pending)
        pending.clear()

    def _other(self, ts: int, out: list[Pending]) -> None:
        """Queue an event outside grant lifecycles: vault, SSO, passport, bundle or DPDP.

        Consent bundles and DPDP records exist on the live envelope only; on the
        documented one those draws make vault or SSO events.
        """
        rand = self._rng.random
        pick = int(rand() * 20)
        live = self._envelope != "documented"
        ledger = self._ledger
        if pick >= 12 and live:
            if pick == 12:
                ledger.bundle_created(ts, out)
                return
            if pick < 16:
                ledger.bundle_followup(ts, out)
                return
            if pick == 18 and ledger.record_withdrawn(ts, out):
                return
            if pick == 19 and rand() < 0.5 and ledger.erasure(ts, out):
                return
            if ledger.record_created(ts, out):
                return
        pool = self._grants.pool
        if 10 <= pick < 12 and pool:
            grant = pool[int(rand() * len(pool))]
            pid = "urn:grantex:passport:" + self._uid(ts)
            categories = _PASSPORT_CATEGORIES[int(rand() * len(_PASSPORT_CATEGORIES))]
            data = (
                f'{{"passportId":"{pid}","agentId":"{grant.agent}","grantId":"{grant.gid}",'
                f'"categories":{categories}}}'
            )
            out.append((ts, "passport.issued", grant.doc, data))
            return
        principal = self._principals[int(rand() * len(self._principals))]
        if pick < 5 or pick >= 10:
            cid = "vault_" + self._uid(ts)
            service = _VAULT_SERVICES[int(rand() * len(_VAULT_SERVICES))]
            data = f'{{"credentialId":"{cid}","principalId":"{principal}","service":"{service}"}}'
            out.append((ts, "vault.credential.stored", not live, data))
            return
        connection, protocol = self._sso[int(rand() * len(self._sso))]
        sid = "sess_" + self._uid(ts)
        email = principal.removeprefix("user_") + "@example.com"
        data = (
            f'{{"connectionId":"{connection}","protocol":"{protocol}","sessionId":"{sid}",'
            f'"email":"{email}"}}'
        )
        out.append((ts, "sso.login", not live, data))


def spread_batches(
    factory: EventFactory, start_ms: int, count: int, num: int, den: int, size: int
) -> Iterator[Batch]:
    """Batches of ``count`` events, event ``i`` stamped ``start_ms + i*num/den`` ms."""
    i = 0
    while i < count:
        batch = Batch()
        limit = min(count, i + size)
        while i < limit:
            i += factory.emit(start_ms + (i * num) // den, count - i)
        factory.flush(batch)
        yield batch


def generate_events(
    seed: int, start: datetime, count: int, spacing_s: float, envelope: str = "live"
) -> Iterator[dict[str, Any]]:
    """Deterministically generate ``count`` event envelopes, the first at ``start``.

    Events are ``spacing_s`` apart, except that a grant.created/token.issued pair shares
    one millisecond (as on the live service). A naive ``start`` is taken as UTC. The
    simulator's backlog is this same sequence for its seed and envelope.
    """
    factory = EventFactory(seed, envelope)
    spacing_us = round(spacing_s * 1_000_000)
    start_ms = datetime_to_ms(start)
    for batch in spread_batches(factory, start_ms, count, spacing_us, 1000, 1024):
        for frame in batch.frames:
            yield cast("dict[str, Any]", json.loads(frame[6:-2]))


def ground_truth(
    seed: int, start: datetime, count: int, spacing_s: float, envelope: str = "live"
) -> GroundTruth:
    """What happened in ``generate_events(seed, start, count, spacing_s, envelope)``.

    Every grant that ended revoked (its first revocation: when, ``via`` which path, by
    whom, in which event) and the kind of every token.issued.
    """
    spacing_us = round(spacing_s * 1_000_000)
    return spread_truth(seed, envelope, datetime_to_ms(start), count, spacing_us, 1000)


def spread_truth(
    seed: int, envelope: str, start_ms: int, count: int, num: int, den: int
) -> GroundTruth:
    """The ground truth of ``spread_batches`` over a fresh factory with these arguments."""
    factory = EventFactory(seed, envelope)
    log = factory.record_truth()
    batches = spread_batches(factory, start_ms, count, num, den, 4096)
    return collect(log, (batch.frames for batch in batches))
