"""Grant lifecycles: the pool of live grants and the events each one goes through.

:class:`GrantPool` creates grants (with delegation chains on the live envelope), walks
them through their plan (token refreshes, budget thresholds, revocations) and queues each
event's ``data`` object as ready-made JSON text. Every string it renders is a generated
ASCII token that needs no escaping.

Revocations follow the live service: ``grant.revoked`` only for a grant still active,
``cascade: true`` when it also revoked descendants (walking only through grants not
revoked yet, ignoring expiry), and an anomaly revokes the flagged agent's active,
unexpired grants in ``anomaly.auto_revoked`` without touching their children.

Token ids follow the live rule: an initial token is made back to back with its grant
(its ULID time within a millisecond or two of the grant id's), a refresh at least
:data:`REFRESH_AFTER_MS` after the grant; a refresh that is not due yet waits.
"""

from __future__ import annotations

import json
import random

from .ids import UlidSource, format_ms
from .plans import (
    REVOKERS,
    SCOPE_SETS,
    STEP_BUDGET,
    STEP_TOKEN,
    TOKEN_STEP,
    PlanLibrary,
    Step,
)
from .truth import TruthLog

# (timestamp ms, event type, documented envelope?, data JSON) of an event not yet rendered
Pending = tuple[int, str, bool, str]

REFRESH_AFTER_MS = 1000
"""A refreshed token's ULID time is at least this long after its grant id's."""
_REFRESH_DUE_MS = REFRESH_AFTER_MS + 12  # a token id is made up to 11 ms before its event
GRANT_TTL_MS = 3_600_000
WATCHED_PRINCIPALS = 8


def compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class Grant:
    __slots__ = (
        "agent", "alive", "children", "depth", "doc", "expires_ms", "gid", "gid_ms",
        "initial_c", "live_core", "principal", "revoked", "scopes", "steps", "tokens",
    )  # fmt: skip

    def __init__(self, gid: str, gid_ms: int, agent: str, principal: str,
                 scopes: tuple[str, ...], doc: bool, depth: int) -> None:  # fmt: skip
        self.gid = gid
        self.gid_ms = gid_ms  # the ULID time of the grant id
        self.expires_ms = gid_ms + GRANT_TTL_MS
        self.agent = agent
        self.principal = principal
        self.scopes = scopes
        self.doc = doc
        self.depth = depth
        self.alive = True  # still in the pool: steps to go
        self.revoked = False
        self.children: list[Grant] = []
        self.initial_c = 0
        self.tokens = 0
        self.live_core = ""
        # Pending lifecycle steps, stored reversed so the next one is a cheap pop().
        self.steps: list[Step] = []


class GrantPool:
    """The grants that still have steps to go, and the events that create and advance them.

    ``rng`` is shared with the caller: the order of its draws is part of what a seed
    means. ``truth``, when set, records every revocation and token kind; ``flushed``
    (kept by the generator) is how many events were rendered before the queue ``out``.
    """

    def __init__(
        self, rng: random.Random, uid: UlidSource, envelope: str, agents: list[str],
        principals: list[str], scopes_json: dict[tuple[str, ...], str], plans: PlanLibrary,
    ) -> None:  # fmt: skip
        self.pool: list[Grant] = []
        self.agents = agents
        self.principals = principals
        self.truth: TruthLog | None = None
        # When set: (grant id, ms, initial cents) of every budget allocation, as made.
        self.allocations: list[tuple[str, int, int]] | None = None
        self.flushed = 0
        # Grants outside the pool that an anomaly can still take (consent-bundle grants).
        self.extra_grants: list[Grant] = []
        # The latest grants of a few principals, for whom DPDP records are usually made.
        self.watched: dict[str, list[Grant]] = {p: [] for p in principals[:WATCHED_PRINCIPALS]}
        self._rng = rng
        self._uid = uid
        self._envelope = envelope
        self._scopes_json = scopes_json
        self._plain_plans = plans.plain
        self._budget_plans = plans.budget
        self._grant_seq = 0

    # Kept whole: this runs on about a third of generator steps, and splitting it into a draw
    # helper and a rendering helper cost 2% more instructions per generated event.
    def new_grant(self, ts: int, room: int, out: list[Pending]) -> None:
        """Queue a grant.created (with its first token.issued when there is room) and plan it."""
        rand = self._rng.random
        self._grant_seq += 1
        env = self._envelope
        doc = env == "documented" or (env == "mixed" and self._grant_seq % 2 == 0)
        parent: Grant | None = None
        if not doc and rand() < 0.08:
            candidates = [g for g in self.pool if not g.doc and g.depth < 3]
            if rand() < 0.5:  # chains grow: sub-agents delegate further
                candidates = [g for g in candidates if g.depth] or candidates
            if candidates:
                parent = candidates[int(rand() * len(candidates))]
        agents = self.agents
        agent = agents[int(rand() * len(agents))]
        if parent is None:
            principal = self.principals[int(rand() * len(self.principals))]
            scopes = SCOPE_SETS[int(rand() * len(SCOPE_SETS))]
            depth = 0
        else:
            principal = parent.principal
            scopes = parent.scopes[: 1 + int(rand() * len(parent.scopes))]
            depth = parent.depth + 1
            if agent == parent.agent:  # a sub-agent acts on the delegated grant
                agent = agents[(agents.index(agent) + 1) % len(agents)]
        # The grant row is written a few ms before its event is published.
        lag = int(rand() * 12)
        gid_ms = ts - lag
        gid = "grnt_" + self._uid(gid_ms)
        grant = Grant(gid, gid_ms, agent, principal, scopes, doc, depth)
        latest = self.watched.get(principal)
        if latest is not None and not doc:
            latest.append(grant)
            if len(latest) > 8:
                del latest[0]
        scopes_json = self._scopes_json.get(scopes) or compact_json(list(scopes))
        if doc:
            created = (
                f'{{"grantId":"{gid}","agentId":"{agent}","principalId":"{principal}",'
                f'"scopes":{scopes_json}}}'
            )
        else:
            expires = format_ms(gid_ms + GRANT_TTL_MS)
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

        # The initial token is made right after the grant, in the same or the next
        # millisecond, and its event sometimes overtakes grant.created.
        paired = room >= 2
        if paired:
            pair = rand()
            token = self._token(grant, gid_ms + (pair > 0.9 and lag > 0), True)
            if pair < 0.17:
                out.append((ts, "token.issued", doc, token))
                out.append((ts, "grant.created", doc, created))
            else:
                out.append((ts, "grant.created", doc, created))
                out.append((ts, "token.issued", doc, token))
        else:
            out.append((ts, "grant.created", doc, created))

        plans = self._budget_plans if "budget:spend" in scopes else self._plain_plans
        grant.initial_c, plan = plans[int(rand() * len(plans))]
        if grant.initial_c and self.allocations is not None:
            self.allocations.append((grant.gid, ts, grant.initial_c))
        steps = list(plan)
        if paired and TOKEN_STEP in steps:
            steps.remove(TOKEN_STEP)  # that token went out with grant.created
        if steps:
            steps.reverse()
            grant.steps = steps
            self.pool.append(grant)
        else:
            grant.alive = False

    def _token(self, grant: Grant, token_ms: int, initial: bool) -> str:
        tid = "tok_" + self._uid(token_ms)
        grant.tokens += 1
        if grant.doc:
            method = "exchange" if grant.tokens == 1 else "refresh"
            if self.truth is not None:
                self.truth.tokens[tid] = method
            return f'{{"grantId":"{grant.gid}","tokenId":"{tid}","method":"{method}"}}'
        if self.truth is not None:
            kind = "refresh" if not initial else ("delegation" if grant.depth else "exchange")
            self.truth.tokens[tid] = kind
        return f'{{"tokenId":"{tid}","grantId":"{grant.gid}",{grant.live_core}}}'

    def advance(self, grant: Grant, ts: int, out: list[Pending]) -> bool:
        """Queue the event of the grant's next step; False if only a refresh not yet due is left.

        A refresh that is not due yet lets the grant's next other step go first.
        """
        steps = grant.steps
        kind, a, b = steps[-1]
        if kind == STEP_TOKEN and ts < grant.gid_ms + _REFRESH_DUE_MS:
            later = len(steps) - 2
            while later >= 0 and steps[later][0] == STEP_TOKEN:
                later -= 1
            if later < 0:
                return False
            kind, a, b = step = steps.pop(later)
            steps.append(step)
        steps.pop()
        if not steps:
            self._retire(grant)
        if kind == STEP_TOKEN:
            token = self._token(grant, ts - int(self._rng.random() * 12), False)
            out.append((ts, "token.issued", grant.doc, token))
        elif kind == STEP_BUDGET:
            gid = grant.gid
            if grant.doc:
                initial = grant.initial_c / 100
                if a == 100:
                    data = f'{{"grantId":"{gid}","initial":{initial!r}}}'
                    out.append((ts, "budget.exhausted", True, data))
                else:
                    data = (
                        f'{{"grantId":"{gid}","percentage":{float(a)!r},'
                        f'"remaining":{b / 100!r},"initial":{initial!r}}}'
                    )
                    out.append((ts, "budget.threshold", True, data))
            elif a == 100:
                out.append(
                    (ts, "budget.exhausted", False, f'{{"grantId":"{gid}","remaining":"0"}}')
                )
            else:
                data = f'{{"grantId":"{gid}","pct":{a},"remaining":"{b // 100}.{b % 100:02d}00"}}'
                out.append((ts, "budget.threshold", False, data))
        else:
            self._revoke(grant, REVOKERS[a], ts, out)
        return True

    def _revoke(self, grant: Grant, who: str, ts: int, out: list[Pending]) -> None:
        if grant.doc:
            self.mark_revoked(grant, ts, "direct", who, len(out))
            out.append(
                (ts, "grant.revoked", True, f'{{"grantId":"{grant.gid}","revokedBy":"{who}"}}')
            )
        elif who == "system":
            # The live service reports system revocations only as an anomaly event.
            self.anomaly(grant, ts, out)
        else:
            self.mark_revoked(grant, ts, "direct", who, len(out))
            cascade = self._cascade(grant, ts, who, len(out))
            data = f'{{"grantId":"{grant.gid}","cascade":{"true" if cascade else "false"}}}'
            out.append((ts, "grant.revoked", False, data))

    def _cascade(self, root: Grant, ts: int, actor: str, queued: int) -> bool:
        """Revoke the root's descendants, walking only through grants not revoked yet."""
        revoked = False
        stack = list(root.children)
        while stack:
            child = stack.pop()
            if child.revoked:
                continue  # the service's walk stops at a revoked grant
            self.mark_revoked(child, ts, "cascade", actor, queued)
            revoked = True
            stack.extend(child.children)
        return revoked

    def anomaly(self, grant: Grant, ts: int, out: list[Pending]) -> None:
        """Queue an anomaly.auto_revoked taking every active, unexpired grant of the agent."""
        agent = grant.agent
        victims = [grant]
        for other in (*self.pool, *self.extra_grants):
            if (
                other.agent == agent
                and not other.doc
                and not other.revoked
                and other.expires_ms > ts
                and other is not grant
            ):
                victims.append(other)
        queued = len(out)
        for victim in victims:
            self.mark_revoked(victim, ts, "anomaly", "system", queued)
        ids = ",".join(f'"{v.gid}"' for v in victims)
        count = 1 if self._rng.random() < 0.85 else 2
        data = f'{{"revokedGrants":[{ids}],"anomalyCount":{count}}}'
        out.append((ts, "anomaly.auto_revoked", False, data))

    def mark_revoked(self, grant: Grant, ts: int, via: str, actor: str, queued: int) -> bool:
        """Revoke ``grant`` by the event about to be queued at ``out[queued]``.

        False (and nothing recorded) when it was already revoked: the first revocation
        is the one that counts.
        """
        if grant.revoked:
            return False
        grant.revoked = True
        self._retire(grant)
        if self.truth is not None:
            self.truth.revocations.append((grant.gid, ts, via, actor, self.flushed + queued))
        return True

    def _retire(self, grant: Grant) -> None:
        if grant.alive:
            grant.alive = False
            self.pool.remove(grant)
