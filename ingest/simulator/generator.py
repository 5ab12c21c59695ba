"""The deterministic event generator: per seed, the same events in the same order.

:class:`EventFactory` interleaves grant lifecycles (:mod:`.grants`) with the other events
the live service publishes and renders them, column-wise, straight to SSE frame text:
skipping dict building and JSON encoding is what makes a million-event backlog take
seconds rather than a minute. :func:`generate_events` is the same sequence as parsed
envelopes, and the simulator's backlog is that sequence for its seed and envelope.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

from .grants import GrantPool, Pending, compact_json
from .ids import MILLIS, PAIRS, UlidSource, datetime_to_ms, format_ms, second_text, ulid_time_head
from .plans import SCOPE_SETS, PlanLibrary

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
    "dpdp.consent.withdrawn",
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
_SSO_PROVIDERS = (("okta", "saml"), ("azure_ad", "oidc"), ("google_workspace", "oidc"))
_DPDP_PURPOSES = ("analytics", "marketing", "personalization", "model_training")


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
        self._grants = GrantPool(
            rng, self._uid, envelope, self._agents, principals, self._scopes_json,
            PlanLibrary(seed),
        )  # fmt: skip

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
        if r < 0.035:
            self._other(ts, out)
        elif size < 4 or (size < 12 and r < 0.25):
            grants.new_grant(ts, room, out)
        else:
            grants.advance(pool[int(self._rng.random() * size)], ts, out)
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
        pending.clear()

    def _other(self, ts: int, out: list[Pending]) -> None:
        """Queue one of the events the live service publishes outside grant lifecycles."""
        rand = self._rng.random
        doc = self._envelope == "documented"
        principal = self._principals[int(rand() * len(self._principals))]
        pick = int(rand() * 4)
        if pick == 0:
            cid = "vc_" + self._uid(ts)
            service = _VAULT_SERVICES[int(rand() * len(_VAULT_SERVICES))]
            kind = "oauth2" if rand() < 0.7 else "api_key"
            data = (
                f'{{"credentialId":"{cid}","principalId":"{principal}",'
                f'"service":"{service}","credentialType":"{kind}"}}'
            )
            out.append((ts, "vault.credential.stored", doc, data))
        elif pick == 1:
            sid = "sess_" + self._uid(ts)
            provider, method = _SSO_PROVIDERS[int(rand() * len(_SSO_PROVIDERS))]
            data = (
                f'{{"principalId":"{principal}","provider":"{provider}","method":"{method}",'
                f'"sessionId":"{sid}"}}'
            )
            out.append((ts, "sso.login", doc, data))
        elif pick == 2:
            pid = "pp_" + self._uid(ts)
            agent = self._agents[int(rand() * len(self._agents))]
            scopes = self._scopes_json[SCOPE_SETS[int(rand() * len(SCOPE_SETS))]]
            expires = format_ms(ts + 86_400_000)
            data = (
                f'{{"passportId":"{pid}","agentId":"{agent}","principalId":"{principal}",'
                f'"scopes":{scopes},"expiresAt":"{expires}"}}'
            )
            out.append((ts, "passport.issued", doc, data))
        else:
            consent = "cns_" + self._uid(ts)
            purpose = _DPDP_PURPOSES[int(rand() * len(_DPDP_PURPOSES))]
            data = f'{{"principalId":"{principal}","consentId":"{consent}","purpose":"{purpose}"}}'
            out.append((ts, "dpdp.consent.withdrawn", doc, data))


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
