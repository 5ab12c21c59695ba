"""Grant lifecycles: the pool of live grants and the events each one goes through.

:class:`GrantPool` creates grants (with delegation chains on the live envelope), walks
them through their plan (token refreshes, budget thresholds, revocations, anomaly
auto-revocations) and queues each event's ``data`` object as ready-made JSON text.
Every string it renders is a generated ASCII token that needs no escaping.
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

# (timestamp ms, event type, documented envelope?, data JSON) of an event not yet rendered
Pending = tuple[int, str, bool, str]

_ANOMALY_REASONS = ("velocity_spike", "scope_escalation", "geo_anomaly", "budget_burn_rate")


def compact_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


class Grant:
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
        self.children: list[Grant] = []
        self.initial_c = 0
        self.tokens = 0
        self.live_core = ""
        # Pending lifecycle steps, stored reversed so the next one is a cheap pop().
        self.steps: list[Step] = []


class GrantPool:
    """The grants that still have steps to go, and the events that create and advance them.

    ``rng`` is shared with the caller: the order of its draws is part of what a seed
    means, so every method draws exactly as it always has.
    """

    def __init__(
        self, rng: random.Random, uid: UlidSource, envelope: str, agents: list[str],
        principals: list[str], scopes_json: dict[tuple[str, ...], str], plans: PlanLibrary,
    ) -> None:  # fmt: skip
        self.pool: list[Grant] = []
        self._rng = rng
        self._uid = uid
        self._envelope = envelope
        self._agents = agents
        self._principals = principals
        self._scopes_json = scopes_json
        self._plain_plans = plans.plain
        self._budget_plans = plans.budget
        self._grant_seq = 0

    # Kept whole: this runs on about a third of generator steps, and splitting it into a draw
    # helper and a rendering helper cost 2% more instructions per generated event.
    def new_grant(self, ts: int, room: int, out: list[Pending]) -> None:
        """Queue a grant.created (often with its first token.issued) and plan the grant."""
        rand = self._rng.random
        self._grant_seq += 1
        env = self._envelope
        doc = env == "documented" or (env == "mixed" and self._grant_seq % 2 == 0)
        parent: Grant | None = None
        if not doc and rand() < 0.08:
            candidates = [g for g in self.pool if not g.doc and g.depth < 3]
            if candidates:
                parent = candidates[int(rand() * len(candidates))]
        agents = self._agents
        agent = agents[int(rand() * len(agents))]
        if parent is None:
            principal = self._principals[int(rand() * len(self._principals))]
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
        gid = "grnt_" + self._uid(ts - lag)
        grant = Grant(gid, agent, principal, scopes, doc, depth)
        scopes_json = self._scopes_json.get(scopes) or compact_json(list(scopes))
        if doc:
            created = (
                f'{{"grantId":"{gid}","agentId":"{agent}","principalId":"{principal}",'
                f'"scopes":{scopes_json}}}'
            )
        else:
            expires = format_ms(ts + 3_600_000 - lag)
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
        if paired and TOKEN_STEP in steps:
            steps.remove(TOKEN_STEP)  # that token went out with grant.created
        if steps:
            steps.reverse()
            grant.steps = steps
            self.pool.append(grant)
        else:
            grant.alive = False

    def _token(self, grant: Grant, ts: int) -> str:
        tid = "tok_" + self._uid(ts - int(self._rng.random() * 12))
        grant.tokens += 1
        if grant.doc:
            method = "exchange" if grant.tokens == 1 else "refresh"
            return f'{{"grantId":"{grant.gid}","tokenId":"{tid}","method":"{method}"}}'
        return f'{{"tokenId":"{tid}","grantId":"{grant.gid}",{grant.live_core}}}'

    def advance(self, grant: Grant, ts: int, out: list[Pending]) -> None:
        """Queue the event of the grant's next step."""
        steps = grant.steps
        kind, a, b = steps.pop()
        if not steps:
            self._retire(grant)
        if kind == STEP_TOKEN:
            out.append((ts, "token.issued", grant.doc, self._token(grant, ts)))
        elif kind == STEP_BUDGET:
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
            self._revoke(grant, REVOKERS[a], ts, out)

    def _revoke(self, grant: Grant, who: str, ts: int, out: list[Pending]) -> None:
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
            for other in self.pool:
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

    def _retire(self, grant: Grant) -> None:
        if grant.alive:
            grant.alive = False
            if grant in self.pool:
                self.pool.remove(grant)

    def _retire_tree(self, grant: Grant) -> None:
        for child in grant.children:
            self._retire(child)
            self._retire_tree(child)
