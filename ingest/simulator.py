"""A Grantex-compatible Server-Sent Events producer for tests, benchmarks and demos.

It serves ``GET /v1/events/stream`` on a local port, stdlib only, and behaves like the
live Grantex service (see ``producer-notes.md``): bare ``data:`` frames, ``: keepalive``
comments, at most five concurrent streams, fire-and-forget ordering. On top of that it can
replay history for ``since`` (which the live service does not do yet) and inject faults.

Storage is built for throughput: every history event is rendered to its frame bytes once,
at generation time, into one append-only buffer with parallel ``array`` columns (offset,
timestamp in ms, type code). A replay is then a handful of large buffer slices per socket
write, and a streaming client is just a cursor into that log, so history and live delivery
can never gap or overlap.
"""

from __future__ import annotations

import bisect
import calendar
import contextlib
import functools
import hmac
import json
import random
import re
import select
import socket
import sys
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import accumulate, chain, islice
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "ENVELOPES",
    "EVENT_TYPES",
    "MALFORMED_KINDS",
    "STREAM_PATH",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "generate_events",
]

STREAM_PATH = "/v1/events/stream"
ENVELOPES: tuple[str, ...] = ("live", "documented", "mixed")
MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_json",
    "not_object",
    "missing_id",
    "missing_type",
    "bad_timestamp",
    "data_not_object",
    "invalid_utf8",
)
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
_TYPE_CODES: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}

# ~256 KiB per socket write keeps syscall and chunk-framing overhead negligible while a
# single write still finishes quickly enough for stop() and fault checks between writes.
_WRITE_CHUNK = 256 * 1024
# Upper bound on one live batch so a generator that fell behind cannot hold the GIL for long.
_MAX_LIVE_BATCH = 20_000
# Idle streams wake this often to notice a client that hung up; without it a closed
# connection would keep its slot (and trigger false 429s) until the next keepalive write.
_IDLE_POLL_S = 0.1
_KEEPALIVE_FRAME = b": keepalive\n\n"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- ids & times

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_CROCKFORD_VALUES: dict[str, int] = {}
for _i, _c in enumerate(_CROCKFORD):
    _CROCKFORD_VALUES[_c] = _i
    _CROCKFORD_VALUES[_c.lower()] = _i
# Random bytes -> Crockford symbols in one C-level translate (256 is a multiple of 32, so
# every symbol stays equally likely).
_BYTE_TO_CROCKFORD = bytes(_CROCKFORD.encode("ascii")[b & 31] for b in range(256))
_RANDOM_POOL_CHARS = 16 * 4096
# Formatting "%03d" costs more than everything else in a timestamp; look it up instead.
_MILLIS = tuple(f".{i:03d}Z" for i in range(1000))


@functools.lru_cache(maxsize=4096)
def _ulid_time_head(head: int) -> str:
    """The first 8 of the 10 ULID time symbols (ms >> 10), which change about once a second."""
    p = _PAIRS
    return (
        f"{p[(head >> 30) & 1023]}{p[(head >> 20) & 1023]}{p[(head >> 10) & 1023]}{p[head & 1023]}"
    )


def _ulid_ms(text: str) -> int | None:
    """The millisecond timestamp of a 26-symbol ULID, or None if it is not one."""
    if len(text) != 26:
        return None
    value = 0
    for ch in text:
        digit = _CROCKFORD_VALUES.get(ch)
        if digit is None:
            return None
        value = (value << 5) | digit
    if value >> 128:
        return None
    return value >> 80


class _UlidSource:
    """ULID-style ids: 48-bit ms time, then 80 random bits from a seeded generator.

    The random symbols are drawn in bulk and sliced off a pool; rendering ids one integer
    at a time was the largest single cost of generating a big backlog.
    """

    __slots__ = ("_rng", "pool", "pos")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.pool = ""
        self.pos = 0

    def refill(self, size: int = _RANDOM_POOL_CHARS) -> None:
        # Sizes stay multiples of 4 bytes, so the symbol sequence is one continuous stream
        # whatever the refill pattern (randbytes consumes whole 32-bit words).
        raw = self._rng.randbytes(size)
        self.pool = raw.translate(_BYTE_TO_CROCKFORD).decode("ascii")
        self.pos = 0

    def take(self, count: int) -> list[str]:
        """The random parts (16 symbols each) of the next ``count`` ids."""
        need = 16 * count
        pos = self.pos
        if pos + need > len(self.pool):
            rest = self.pool[pos:]
            self.refill(max(_RANDOM_POOL_CHARS, need))
            self.pool = rest + self.pool
            pos = 0
        self.pos = pos + need
        pool = self.pool
        return [pool[i : i + 16] for i in range(pos, pos + need, 16)]

    def __call__(self, ms: int) -> str:
        pos = self.pos
        if pos + 16 > len(self.pool):
            rest = self.pool[pos:]
            self.refill()
            self.pool = rest + self.pool
            pos = 0
        self.pos = pos + 16
        return f"{_ulid_time_head(ms >> 10)}{_PAIRS[ms & 1023]}{self.pool[pos : pos + 16]}"


def _format_ms(ms: int) -> str:
    return _second_text(ms // 1000) + _MILLIS[ms % 1000]


@functools.lru_cache(maxsize=8192)
def _second_text(sec: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a Unix second; cached, as strftime dominates otherwise."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def _datetime_to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - _EPOCH) // timedelta(milliseconds=1)


def _ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


_SINCE_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
# An unencoded "+" in a query string arrives as a space; accept "...T12:00:00 05:30".
_SPACE_OFFSET_RE = re.compile(r"(.*[Tt].*\d) (\d{2}(?::?\d{2})?)")


def _parse_since_ms(text: str) -> int:
    """Return the smallest whole millisecond >= the instant, so ``ts >= since`` is exact."""
    text = text.strip()
    fixed = _SPACE_OFFSET_RE.fullmatch(text)
    if fixed:
        text = f"{fixed.group(1)}+{fixed.group(2)}"
    m = _SINCE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hour = int(m.group(4) or 0)
    minute = int(m.group(5) or 0)
    second = int(m.group(6) or 0)
    datetime(year, month, day, hour, minute, second)  # range validation only
    offset_s = 0
    zone = m.group(8)
    if zone and zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        off_h, off_m = int(digits[:2]), int(digits[2:4] or 0)
        if off_h > 23 or off_m > 59:
            raise ValueError(f"bad UTC offset: {zone!r}")
        offset_s = (off_h * 3600 + off_m * 60) * (1 if zone[0] == "+" else -1)
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset_s
    frac = m.group(7) or ""
    ms = seconds * 1000 + int((frac + "000")[:3])
    if frac[3:].strip("0"):
        ms += 1
    return ms


# --------------------------------------------------------------------------- generator

_FIRST_NAMES = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "kim", "leo", "mallory", "nina", "oscar", "peggy", "quinn", "rupert", "sybil", "trent",
    "uma", "victor", "wendy", "xavier", "yara", "zane", "amara", "bruno", "chen", "dmitri",
    "elif", "farah", "goran", "hana", "ines", "jonas", "kofi", "lena", "mateo", "noor",
    "olga", "priya", "rafael", "sofia", "tariq", "ursula", "vikram", "wei", "yusuf", "zara",
)  # fmt: skip
_SCOPE_SETS: tuple[tuple[str, ...], ...] = (
    ("files:read",),
    ("files:read", "budget:spend"),
    ("budget:spend",),
    ("calendar:read", "calendar:write"),
    ("email:send", "contacts:read"),
    ("payments:initiate", "budget:spend"),
    ("files:read", "files:write"),
    ("crm:read", "budget:spend"),
)
_BUDGETS = (5, 10, 20, 25, 50, 100, 250, 500)
_ANOMALY_REASONS = ("velocity_spike", "scope_escalation", "geo_anomaly", "budget_burn_rate")
_VAULT_SERVICES = ("github", "google", "slack", "stripe", "notion", "salesforce")
_SSO_PROVIDERS = (("okta", "saml"), ("azure_ad", "oidc"), ("google_workspace", "oidc"))
_DPDP_PURPOSES = ("analytics", "marketing", "personalization", "model_training")

_STEP_TOKEN = 0
_STEP_BUDGET = 1
_STEP_REVOKE = 2
_REVOKERS = ("developer", "developer", "developer", "principal", "principal", "system")
_TOKEN_STEP = (_STEP_TOKEN, 0, 0)
_EXHAUSTED_STEP = (_STEP_BUDGET, 100, 0)


_Step = tuple[int, int, int]  # (kind, a, b): budget (pct or 100, remaining cents), revoker
_Plan = tuple[int, tuple[_Step, ...]]  # (initial budget in cents, steps after grant.created)


def _make_plan(rng: random.Random, budget: bool) -> _Plan:
    """One grant's future: token refreshes, budget debits, maybe a revocation."""
    rand = rng.random
    r = rand()
    n_tokens = 1 if r < 0.5 else (2 if r < 0.85 else 3)
    initial_c = 0
    steps: list[_Step] = []
    if budget:
        initial_c = _BUDGETS[int(rand() * len(_BUDGETS))] * 100
        # Debit until exhausted or the agent stops spending; an event per debit >= 50%.
        consumed = 0
        stop_level = 2.0 if rand() < 0.6 else 0.3 + rand() * 0.6
        jump = 0.12  # the first debit is more often one big one that exhausts at once
        while True:
            if rand() < jump:
                consumed = initial_c
            else:
                consumed += max(1, int(initial_c * (0.04 + rand() * 0.3)))
            jump = 0.05
            if consumed >= initial_c:
                steps.append(_EXHAUSTED_STEP)
                break
            level = consumed / initial_c
            if level >= 0.8:
                steps.append((_STEP_BUDGET, 80, initial_c - consumed))
            elif level >= 0.5:
                steps.append((_STEP_BUDGET, 50, initial_c - consumed))
            if level >= stop_level:
                break
    # Tokens get refreshed while the budget is being spent.
    for _ in range(n_tokens):
        steps.insert(int(rand() * (len(steps) + 1)), _TOKEN_STEP)
    if rand() < 0.30:
        del steps[int(rand() * (len(steps) + 1)) :]
        steps.append((_STEP_REVOKE, int(rand() * len(_REVOKERS)), 0))
    return initial_c, tuple(steps)


def _compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


# (timestamp ms, event type, documented envelope?, data JSON) of an event not yet rendered
_Pending = tuple[int, str, bool, str]


class _Grant:
    __slots__ = (
        "agent", "alive", "children", "depth", "doc", "gid", "initial_c", "live_core",
        "principal", "scopes", "steps", "tokens",
    )  # fmt: skip

    def __init__(self, gid: str, agent: str, principal: str, scopes: tuple[str, ...],
                 doc: bool, depth: int) -> None:  # fmt: skip
        self.gid = gid
        self.agent = agent
        self.principal = principal
        self.scopes = scopes
        self.doc = doc
        self.depth = depth
        self.alive = True
        self.children: list[_Grant] = []
        self.initial_c = 0
        self.tokens = 0
        self.live_core = ""
        # Pending lifecycle steps, stored reversed so the next one is a cheap pop().
        self.steps: list[_Step] = []


class _EventFactory:
    """Deterministic (per seed) stream of interleaved grant lifecycles and other events.

    Everything is rendered straight to JSON text: each string it emits is a generated
    ASCII token that needs no escaping, and skipping dict building + json encoding is what
    makes a million-event backlog take seconds rather than a minute.
    """

    def __init__(self, seed: int, envelope: str, frame_ids: bool = False) -> None:
        if envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}, got {envelope!r}")
        rng = random.Random(seed)
        self._rng = rng
        self._envelope = envelope
        self._frame_ids = frame_ids
        # Separate streams, so event ids do not depend on how generation is batched.
        self._uid = _UlidSource(random.Random(f"grantex-entity-ids-{seed}"))
        self._event_ids = _UlidSource(random.Random(f"grantex-event-ids-{seed}"))
        self._grant_seq = 0
        self._pool: list[_Grant] = []
        self._pending: list[_Pending] = []
        agent_epoch = 1_735_689_600_000  # 2025-01-01: agents were registered long ago
        self._agents = [
            "ag_" + self._uid(agent_epoch + rng.randrange(300 * 86_400_000)) for _ in range(36)
        ]
        principals = [f"user_{name}" for name in _FIRST_NAMES]
        while len(principals) < 320:
            name = _FIRST_NAMES[rng.randrange(len(_FIRST_NAMES))]
            principals.append(f"user_{name}{rng.randrange(10, 1000)}")
        self._principals = principals
        self._scopes_json = {s: _compact_json(list(s)) for s in _SCOPE_SETS}
        # Grants draw their future from a per-seed library of plans: planning each grant
        # afresh was a third of the cost of generating a large backlog.
        planner = random.Random(f"grantex-plans-{seed}")
        self._plain_plans = [_make_plan(planner, False) for _ in range(512)]
        self._budget_plans = [_make_plan(planner, True) for _ in range(4096)]

    def emit(self, ts: int, room: int) -> int:
        """Queue the next 1 or 2 events (never more than ``room``), stamped ``ts``.

        Two events come from one call only for a grant.created/token.issued pair, which
        the live service publishes in the same millisecond and sometimes in the "wrong"
        order. Returns the number queued; :meth:`flush` renders them.
        """
        out = self._pending
        before = len(out)
        r = self._rng.random()
        pool = self._pool
        size = len(pool)
        if r < 0.035:
            self._other(ts, out)
        elif size < 4 or (size < 12 and r < 0.25):
            self._new_grant(ts, room, out)
        else:
            self._advance(pool[int(self._rng.random() * size)], ts, out)
        return len(out) - before

    def flush(self, batch: _Batch) -> None:
        """Render the queued events to SSE frames, appending them to ``batch``."""
        pending = self._pending
        if not pending:
            return
        # Rendering is done column-wise in comprehensions: per-event Python overhead is
        # what bounds how fast a multi-million-event backlog can be generated.
        sec_text = _second_text
        rand = self._event_ids.take(len(pending))
        head = _ulid_time_head
        pairs = _PAIRS
        millis = _MILLIS
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
        codes = _TYPE_CODES
        batch.codes.extend([codes[record[1]] for record in pending])
        pending.clear()

    # -- grant lifecycles

    def _new_grant(self, ts: int, room: int, out: list[_Pending]) -> None:
        rand = self._rng.random
        self._grant_seq += 1
        env = self._envelope
        doc = env == "documented" or (env == "mixed" and self._grant_seq % 2 == 0)
        parent: _Grant | None = None
        if not doc and rand() < 0.08:
            candidates = [g for g in self._pool if not g.doc and g.depth < 3]
            if candidates:
                parent = candidates[int(rand() * len(candidates))]
        agents = self._agents
        agent = agents[int(rand() * len(agents))]
        if parent is None:
            principal = self._principals[int(rand() * len(self._principals))]
            scopes = _SCOPE_SETS[int(rand() * len(_SCOPE_SETS))]
            depth = 0
        else:
            principal = parent.principal
            scopes = parent.scopes[: 1 + int(rand() * len(parent.scopes))]
            depth = parent.depth + 1
            if agent == parent.agent:  # a sub-agent acts on the delegated grant
                agent = agents[(agents.index(agent) + 1) % len(agents)]
        # The grant row is written a few ms before its event is published.
        lag = int(rand() * 12)
        gid = "grnt_" + self._uid(ts - lag)
        grant = _Grant(gid, agent, principal, scopes, doc, depth)
        scopes_json = self._scopes_json.get(scopes) or _compact_json(list(scopes))
        if doc:
            created = (
                f'{{"grantId":"{gid}","agentId":"{agent}","principalId":"{principal}",'
                f'"scopes":{scopes_json}}}'
            )
        else:
            expires = _format_ms(ts + 3_600_000 - lag)
            core = grant.live_core = (
                f'"agentId":"{agent}","principalId":"{principal}","scopes":{scopes_json},'
                f'"expiresAt":"{expires}"'
            )
            if parent is None:
                created = f'{{"grantId":"{gid}",{core}}}'
            else:
                created = (
                    f'{{"grantId":"{gid}",{core},"delegationDepth":{depth},'
                    f'"parentGrantId":"{parent.gid}"}}'
                )
                parent.children.append(grant)

        pair = rand()
        paired = room >= 2 and pair < 0.75
        if paired:
            token = self._token(grant, ts)
            if pair < 0.62:
                out.append((ts, "grant.created", doc, created))
                out.append((ts, "token.issued", doc, token))
            else:
                out.append((ts, "token.issued", doc, token))
                out.append((ts, "grant.created", doc, created))
        else:
            out.append((ts, "grant.created", doc, created))

        plans = self._budget_plans if "budget:spend" in scopes else self._plain_plans
        grant.initial_c, plan = plans[int(rand() * len(plans))]
        steps = list(plan)
        if paired and _TOKEN_STEP in steps:
            steps.remove(_TOKEN_STEP)  # that token went out with grant.created
        if steps:
            steps.reverse()
            grant.steps = steps
            self._pool.append(grant)
        else:
            grant.alive = False

    def _token(self, grant: _Grant, ts: int) -> str:
        tid = "tok_" + self._uid(ts - int(self._rng.random() * 12))
        grant.tokens += 1
        if grant.doc:
            method = "exchange" if grant.tokens == 1 else "refresh"
            return f'{{"grantId":"{grant.gid}","tokenId":"{tid}","method":"{method}"}}'
        return f'{{"tokenId":"{tid}","grantId":"{grant.gid}",{grant.live_core}}}'

    def _advance(self, grant: _Grant, ts: int, out: list[_Pending]) -> None:
        steps = grant.steps
        kind, a, b = steps.pop()
        if not steps:
            self._retire(grant)
        if kind == _STEP_TOKEN:
            out.append((ts, "token.issued", grant.doc, self._token(grant, ts)))
        elif kind == _STEP_BUDGET:
            gid = grant.gid
            if grant.doc:
                initial = grant.initial_c / 100
                if a == 100:
                    out.append(
                        (
                            ts,
                            "budget.exhausted",
                            True,
                            f'{{"grantId":"{gid}","initial":{initial!r}}}',
                        )
                    )
                else:
                    out.append(
                        (
                            ts,
                            "budget.threshold",
                            True,
                            f'{{"grantId":"{gid}","percentage":{float(a)!r},'
                            f'"remaining":{b / 100!r},"initial":{initial!r}}}',
                        )
                    )
            elif a == 100:
                out.append(
                    (ts, "budget.exhausted", False, f'{{"grantId":"{gid}","remaining":"0"}}')
                )
            else:
                out.append(
                    (
                        ts,
                        "budget.threshold",
                        False,
                        f'{{"grantId":"{gid}","pct":{a},"remaining":"{b // 100}.{b % 100:02d}00"}}',
                    )
                )
        else:
            self._revoke(grant, _REVOKERS[a], ts, out)

    def _revoke(self, grant: _Grant, who: str, ts: int, out: list[_Pending]) -> None:
        self._retire(grant)
        if grant.doc:
            out.append(
                (ts, "grant.revoked", True, f'{{"grantId":"{grant.gid}","revokedBy":"{who}"}}')
            )
            return
        if who == "system":
            # The live service reports system revocations only as an anomaly event, and an
            # anomaly usually takes out the agent's other live grants with it.
            victims = [grant]
            for other in self._pool:
                if len(victims) >= 3:
                    break
                if other.agent == grant.agent and not other.doc:
                    victims.append(other)
            for victim in victims[1:]:
                self._retire(victim)
            reason = _ANOMALY_REASONS[int(self._rng.random() * len(_ANOMALY_REASONS))]
            ids = ",".join(f'"{v.gid}"' for v in victims)
            out.append(
                (
                    ts,
                    "anomaly.auto_revoked",
                    False,
                    f'{{"agentId":"{grant.agent}","reason":"{reason}","revokedGrants":[{ids}]}}',
                )
            )
            return
        cascade = any(child.alive for child in grant.children)
        if cascade:
            self._retire_tree(grant)
        data = f'{{"grantId":"{grant.gid}","cascade":{"true" if cascade else "false"}}}'
        out.append((ts, "grant.revoked", False, data))

    def _retire(self, grant: _Grant) -> None:
        if grant.alive:
            grant.alive = False
            if grant in self._pool:
                self._pool.remove(grant)

    def _retire_tree(self, grant: _Grant) -> None:
        for child in grant.children:
            self._retire(child)
            self._retire_tree(child)

    # -- everything else the live service publishes

    def _other(self, ts: int, out: list[_Pending]) -> None:
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
            scopes = self._scopes_json[_SCOPE_SETS[int(rand() * len(_SCOPE_SETS))]]
            expires = _format_ms(ts + 86_400_000)
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


class _Batch:
    """Parallel columns of freshly generated events, appended to the history in one go."""

    __slots__ = ("codes", "frames", "ts")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.codes: list[int] = []
        self.frames: list[str] = []


def _spread_batches(
    factory: _EventFactory, start_ms: int, count: int, num: int, den: int, size: int
) -> Iterator[_Batch]:
    """Batches of ``count`` events, event ``i`` stamped ``start_ms + i*num/den`` ms."""
    i = 0
    while i < count:
        batch = _Batch()
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
    factory = _EventFactory(seed, envelope)
    spacing_us = round(spacing_s * 1_000_000)
    start_ms = _datetime_to_ms(start)
    for batch in _spread_batches(factory, start_ms, count, spacing_us, 1000, 1024):
        for frame in batch.frames:
            yield cast("dict[str, Any]", json.loads(frame[6:-2]))


# --------------------------------------------------------------------------- history log


class _History:
    """Append-only log of rendered frames; columns are arrays, frames share one buffer."""

    def __init__(self, emit_ids: bool) -> None:
        self.cond = threading.Condition()
        self.buf = bytearray()
        self.offsets: array[int] = array("q", [0])
        self.ts: array[int] = array("q")
        self.types: array[int] = array("B")
        self.count = 0
        self.last_ts = 0
        # The JSON starts after "data: " (and the fixed-width "id: evt_<26>\n" line).
        self.json_skip = (4 + 30 + 1 + 6) if emit_ids else 6

    def append(self, batch: _Batch) -> None:
        frames = batch.frames
        if not frames:
            return
        blob = "".join(frames)
        with self.cond:
            offsets = self.offsets
            if blob.isascii():
                # ASCII: str lengths are byte lengths, so one encode serves the whole batch
                # and the offsets are a running sum computed without a Python-level loop.
                self.buf += blob.encode("ascii")
                ends = accumulate(chain((offsets[-1],), map(len, frames)))
                offsets.extend(islice(ends, 1, None))
            else:
                for frame in frames:
                    data = frame.encode("utf-8")
                    self.buf += data
                    offsets.append(offsets[-1] + len(data))
            self.ts.extend(batch.ts)
            self.types.extend(batch.codes)
            self.last_ts = batch.ts[-1]
            # Publish the new length last: readers only look at indices below `count`.
            self.count += len(frames)
            self.cond.notify_all()

    def envelope(self, index: int) -> dict[str, Any]:
        start = self.offsets[index] + self.json_skip
        end = self.offsets[index + 1] - 2
        return cast("dict[str, Any]", json.loads(self.buf[start:end]))


# --------------------------------------------------------------------------- server


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves; the defaults mimic the live Grantex service.

    ``backlog`` events are generated at start, spread over the ``backlog_span`` seconds
    before it (replayed only for ``since``); live events follow at ``rate`` per second
    (up to ``total_events``). ``envelope`` is "live", "documented" or "mixed" (alternating
    per grant). Faults: ``drop_every`` cuts each connection mid-frame after that many
    events; ``fail_statuses`` answers the first stream requests with those statuses,
    ``fail_always`` every one (both with ``Retry-After: retry_after`` when set);
    ``malformed_every`` slips a malformed frame (cycling through MALFORMED_KINDS) after
    that many good ones. ``emit_ids`` adds ``id:`` fields and honours Last-Event-ID;
    ``emit_retry`` writes ``retry: <ms>`` when a stream opens.
    """

    api_key: str
    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    backlog: int = 0
    backlog_span: float = 86400.0
    rate: float = 10.0
    total_events: int | None = None
    envelope: str = "live"
    keepalive: float = 30.0
    max_connections: int = 5
    drop_every: int | None = None
    fail_statuses: tuple[int, ...] = ()
    fail_always: int | None = None
    retry_after: float | None = None
    malformed_every: int | None = None
    emit_ids: bool = False
    emit_retry: int | None = None

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}, got {self.envelope!r}")
        if self.backlog < 0 or self.rate < 0 or self.backlog_span < 0 or self.keepalive < 0:
            raise ValueError("backlog, backlog_span, rate and keepalive must be >= 0")
        for name in ("drop_every", "malformed_every", "total_events"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "total_events" else 1):
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")


@dataclass
class SimulatorStats:
    requests: int = 0  # every GET of the stream path, whatever its answer
    connections: int = 0  # streams answered 200
    active: int = 0  # streams open right now
    events_sent: int = 0  # well-formed event frames written in full, all connections
    malformed_sent: int = 0
    dropped: int = 0  # connections cut mid-frame by drop_every


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients vanishing mid-stream is routine here, not worth a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "grantex-simulator/1.0"
    sys_version = ""

    @property
    def sim(self) -> Simulator:
        return cast(_Server, self.server).simulator

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sim._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.sim._track(self.connection, False)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.sim._handle_get(self)

    def _not_found(self) -> None:
        # Drain a (small) request body first: closing with unread input makes the kernel
        # send RST, and the client could lose the 404 it is about to receive.
        length = self.headers.get("Content-Length", "")
        if length.isdigit() and int(length) <= 1 << 20:
            self.rfile.read(int(length))
        self.sim._send_json(self, 404, "NOT_FOUND", f"no route for {self.command} {self.path}")

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _not_found

    def do_HEAD(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True


_FAULT_CODES = {
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


class _Closed(Exception):
    """The stream must end now (stop(), client gone or an injected drop)."""


class _Conn:
    """Per-connection write state: chunked framing plus fault counters."""

    __slots__ = ("good", "sock", "written")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.good = 0  # well-formed events sent on this connection
        self.written = False  # anything written since the idle clock was last reset

    def write(self, payload: bytes | bytearray) -> None:
        if payload:
            self.sock.sendall(b"".join((b"%x\r\n" % len(payload), payload, b"\r\n")))
            self.written = True


class Simulator:
    """A local Grantex event producer. Use as a context manager or start()/stop()."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SimulatorStats()
        self._lock = threading.Lock()
        self._factory = _EventFactory(config.seed, config.envelope, config.emit_ids)
        self._history = _History(config.emit_ids)
        self._stopping = threading.Event()
        self._started = False
        self._stopped = False
        self._server: _Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._live_thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self._fault_seq = 0
        self._malformed_seq = 0
        self._malformed_ids = _UlidSource(random.Random(f"grantex-malformed-{config.seed}"))
        self._start_ms = 0
        self._history_start_ms = 0
        self._key = config.api_key.encode("utf-8")

    # -- lifecycle

    def start(self) -> Simulator:
        with self._lock:
            if self._started or self._stopped:
                raise RuntimeError("a simulator can be started only once")
            self._started = True
        cfg = self.config
        self._start_ms = time.time_ns() // 1_000_000
        span_ms = round(cfg.backlog_span * 1000) if cfg.backlog else 0
        self._history_start_ms = self._start_ms - span_ms
        if cfg.backlog:
            self._generate_backlog(cfg.backlog, span_ms)
        self._server = _Server((cfg.host, cfg.port), self)
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="grantex-sim-http",
            daemon=True,
        )
        self._serve_thread.start()
        if cfg.rate > 0 and cfg.total_events != 0:
            self._live_thread = threading.Thread(
                target=self._live_loop, name="grantex-sim-live", daemon=True
            )
            self._live_thread.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                self._stopping.set()
                return
            self._stopped = True
        self._stopping.set()
        with self._history.cond:
            self._history.cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._server is not None:
            self._server.server_close()
        for thread in (self._live_thread, self._serve_thread):
            if thread is not None:
                thread.join(timeout=5)
        deadline = time.monotonic() + 2
        while self.stats.active and time.monotonic() < deadline:
            time.sleep(0.01)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until stop() (from another thread) or Ctrl-C; always stops cleanly."""
        if not self._started:
            self.start()
        try:
            # Waiting in slices keeps the main thread responsive to KeyboardInterrupt.
            while not self._stopping.wait(0.25):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- introspection

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        host_text = host.decode() if isinstance(host, bytes) else str(host)
        if ":" in host_text:
            host_text = f"[{host_text}]"
        return f"http://{host_text}:{port}"

    @property
    def history_start(self) -> datetime:
        if not self._started:
            raise RuntimeError("simulator not started")
        return _ms_to_datetime(self._history_start_ms)

    @property
    def event_count(self) -> int:
        """Number of well-formed events generated so far (backlog + live), without parsing."""
        return self._history.count

    def events(self) -> list[dict[str, Any]]:
        """Every well-formed envelope generated so far (backlog + live), in emission order.

        The dicts are parsed from the stored frames on each call, so this costs memory and
        time proportional to the history: for big backlogs prefer :attr:`event_count`.
        """
        history = self._history
        with history.cond:
            count = history.count
        return [history.envelope(i) for i in range(count)]

    # -- generation

    def _generate_backlog(self, count: int, span_ms: int) -> None:
        start_ms = self._history_start_ms
        for batch in _spread_batches(self._factory, start_ms, count, span_ms, count, 8192):
            self._history.append(batch)

    def _live_loop(self) -> None:
        cfg = self.config
        rate = cfg.rate
        total = cfg.total_events
        factory = self._factory
        history = self._history
        started = time.monotonic()
        produced = 0
        while not self._stopping.is_set():
            if total is not None and produced >= total:
                return
            due = int((time.monotonic() - started) * rate) - produced
            if due <= 0:
                wake_at = started + (produced + 1) / rate
                self._stopping.wait(max(0.0, wake_at - time.monotonic()))
                continue
            room = min(due, _MAX_LIVE_BATCH)
            if total is not None:
                room = min(room, total - produced)
            # Live timestamps never go backwards, so `since` can bisect the whole log.
            now = max(time.time_ns() // 1_000_000, history.last_ts, self._start_ms)
            batch = _Batch()
            made = 0
            while made < room:
                made += factory.emit(now, room - made)
            factory.flush(batch)
            history.append(batch)
            produced += made

    # -- HTTP

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _send_json(
        self, handler: BaseHTTPRequestHandler, status: int, code: str, message: str,
        retry_after: bool = False,
    ) -> None:  # fmt: skip
        body = json.dumps({"message": message, "code": code}).encode("utf-8")
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        value = self.config.retry_after
        if retry_after and value is not None:
            text = str(int(value)) if float(value).is_integer() else repr(float(value))
            handler.send_header("Retry-After", text)
        handler.end_headers()
        handler.wfile.write(body)
        handler.close_connection = True

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode("utf-8"), self._key)

    def _next_fault(self) -> int | None:
        cfg = self.config
        if cfg.fail_always is not None:
            return cfg.fail_always
        with self._lock:
            seq = self._fault_seq
            self._fault_seq += 1
        if seq < len(cfg.fail_statuses):
            return cfg.fail_statuses[seq]
        return None

    def _handle_get(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        if url.path != STREAM_PATH:
            self._send_json(handler, 404, "NOT_FOUND", f"no route for GET {url.path}")
            return
        with self._lock:
            self.stats.requests += 1
        if not self._authorized(handler.headers.get("Authorization")):
            self._send_json(handler, 401, "UNAUTHORIZED", "invalid or missing API key")
            return
        fault = self._next_fault()
        if fault is not None:
            try:
                code = _FAULT_CODES.get(fault) or HTTPStatus(fault).name
            except ValueError:
                code = "ERROR"
            self._send_json(handler, fault, code, f"injected fault {fault}", retry_after=True)
            return
        query = parse_qs(url.query, keep_blank_values=True)
        since_ms: int | None = None
        if query.get("since") and query["since"][-1].strip():
            try:
                since_ms = _parse_since_ms(query["since"][-1])
            except ValueError as exc:
                self._send_json(handler, 400, "BAD_REQUEST", f"invalid since: {exc}")
                return
        allowed: frozenset[int] | None = None
        wanted = [t.strip() for v in query.get("types", []) for t in v.split(",") if t.strip()]
        if wanted:
            allowed = frozenset(_TYPE_CODES[t] for t in wanted if t in _TYPE_CODES)
            if len(allowed) == len(_TYPE_CODES):
                allowed = None
        with self._lock:
            full = self.stats.active >= self.config.max_connections
            if not full:
                self.stats.active += 1
                self.stats.connections += 1
        if full:
            self._send_json(
                handler, 429, "TOO_MANY_CONNECTIONS",
                f"at most {self.config.max_connections} concurrent stream connections",
                retry_after=True,
            )  # fmt: skip
            return
        handler.close_connection = True
        try:
            cursor = self._initial_cursor(since_ms, handler.headers.get("Last-Event-ID"))
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-cache")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.send_header("Connection", "close")
            handler.send_header("X-Accel-Buffering", "no")
            handler.end_headers()
            self._stream(_Conn(handler.connection), cursor, allowed)
        except (_Closed, OSError):
            pass
        finally:
            with self._lock:
                self.stats.active -= 1

    def _initial_cursor(self, since_ms: int | None, last_event_id: str | None) -> int:
        history = self._history
        with history.cond:
            count = history.count
            if self.config.emit_ids and last_event_id:
                index = self._find_event(last_event_id.strip(), count)
                if index is not None:
                    return index + 1
            if since_ms is not None:
                return bisect.bisect_left(history.ts, since_ms, 0, count)
            return count

    def _find_event(self, event_id: str, count: int) -> int | None:
        """Index of a known event id, found via its ULID time part: no id index is kept."""
        if not event_id.startswith("evt_"):
            return None
        ms = _ulid_ms(event_id[4:])
        if ms is None:
            return None
        history = self._history
        needle = ("evt_" + event_id[4:].upper()).encode("ascii")
        lo = bisect.bisect_left(history.ts, ms, 0, count)
        hi = bisect.bisect_right(history.ts, ms, lo, count)
        for index in range(lo, hi):
            start = history.offsets[index] + 4  # frames start with "id: " when emit_ids is set
            if history.buf[start : start + len(needle)] == needle:
                return index
        return None

    def _stream(self, conn: _Conn, cursor: int, allowed: frozenset[int] | None) -> None:
        cfg = self.config
        history = self._history
        stopping = self._stopping
        if cfg.emit_retry is not None:
            conn.write(b"retry: %d\n\n" % cfg.emit_retry)
        keepalive = cfg.keepalive
        last_write = time.monotonic()
        while not stopping.is_set():
            count = history.count
            if count > cursor:
                conn.written = False
                self._send_range(conn, cursor, count, allowed)
                cursor = count
                if conn.written:
                    last_write = time.monotonic()
                continue
            timeout = _IDLE_POLL_S
            if keepalive > 0:
                remaining = last_write + keepalive - time.monotonic()
                if remaining <= 0:
                    conn.write(_KEEPALIVE_FRAME)
                    last_write = time.monotonic()
                    continue
                timeout = min(timeout, remaining)
            with history.cond:
                if history.count <= cursor and not stopping.is_set():
                    history.cond.wait(timeout)
            if self._peer_closed(conn.sock):
                return

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            # Anything the client sends after its request is ignored; EOF means it left.
            return sock.recv(4096, getattr(socket, "MSG_DONTWAIT", 0)) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def _send_range(self, conn: _Conn, lo: int, hi: int, allowed: frozenset[int] | None) -> None:
        cfg = self.config
        history = self._history
        buf = history.buf
        offsets = history.offsets
        stopping = self._stopping
        if allowed is None and cfg.drop_every is None and cfg.malformed_every is None:
            # Fast path: the frames are contiguous, so ship raw slices of the log.
            pos, end = offsets[lo], offsets[hi]
            while pos < end:
                if stopping.is_set():
                    raise _Closed
                nxt = min(end, pos + _WRITE_CHUNK)
                conn.write(buf[pos:nxt])
                pos = nxt
            conn.good += hi - lo
            with self._lock:
                self.stats.events_sent += hi - lo
            return

        drop_every = cfg.drop_every
        malformed_every = cfg.malformed_every
        types = history.types
        parts: list[bytes | bytearray] = []
        size = 0
        sent = 0
        malformed = 0
        try:
            for i in range(lo, hi):
                if allowed is not None and types[i] not in allowed:
                    continue
                frame = buf[offsets[i] : offsets[i + 1]]
                if drop_every is not None and conn.good >= drop_every:
                    self._drop(conn, parts, frame)
                good = conn.good = conn.good + 1
                parts.append(frame)
                size += len(frame)
                sent += 1
                if malformed_every is not None and good % malformed_every == 0:
                    bad = self._malformed_frame()
                    parts.append(bad)
                    size += len(bad)
                    malformed += 1
                if size >= _WRITE_CHUNK:
                    if stopping.is_set():
                        raise _Closed
                    conn.write(b"".join(parts))
                    parts = []
                    size = 0
            conn.write(b"".join(parts))
        finally:
            with self._lock:
                self.stats.events_sent += sent
                self.stats.malformed_sent += malformed

    def _drop(self, conn: _Conn, parts: list[bytes | bytearray], frame: bytearray) -> None:
        conn.write(b"".join(parts))
        parts.clear()
        half = frame[: len(frame) // 2]
        # The chunk header promises the whole frame, so the cut is mid-chunk as well as
        # mid-frame: the client sees an incomplete body, exactly like a dropped TCP link.
        conn.sock.sendall(b"%x\r\n" % len(frame) + half)
        with self._lock:
            self.stats.dropped += 1
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_RDWR)
        raise _Closed

    def _malformed_frame(self) -> bytes:
        ms = time.time_ns() // 1_000_000
        with self._lock:
            seq = self._malformed_seq
            self._malformed_seq += 1
            eid = "evt_" + self._malformed_ids(ms)
        # Kinds cycle simulator-wide so clients that reconnect often still meet them all.
        kind = MALFORMED_KINDS[seq % len(MALFORMED_KINDS)]
        stamp = _format_ms(ms)
        key = "timestamp" if self.config.envelope == "documented" else "createdAt"
        data = '{"principalId":"user_mallory","provider":"okta","method":"saml"}'
        if kind == "invalid_json":
            return b'data: {"id": "evt_x", broken\n\n'
        if kind == "not_object":
            return b"data: [1,2,3]\n\n"
        if kind == "missing_id":
            body = f'{{"type":"sso.login","{key}":"{stamp}","data":{data}}}'
        elif kind == "missing_type":
            body = f'{{"id":"{eid}","{key}":"{stamp}","data":{data}}}'
        elif kind == "bad_timestamp":
            body = f'{{"id":"{eid}","type":"sso.login","{key}":"not-a-time","data":{data}}}'
        elif kind == "data_not_object":
            body = f'{{"id":"{eid}","type":"sso.login","{key}":"{stamp}","data":"oops"}}'
        else:  # invalid_utf8
            prefix = f'data: {{"id":"{eid}","type":"sso.login","{key}":"{stamp}","data":'
            return prefix.encode("ascii") + b'{"note":"\xff\xfe"}}\n\n'
        return f"data: {body}\n\n".encode("ascii")
