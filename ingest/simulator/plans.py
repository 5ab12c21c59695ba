"""Grant plans: what happens to a grant after grant.created, decided up front.

A plan is the grant's initial budget and its ordered steps (token refreshes, budget
threshold/exhausted debits, maybe a revocation). Plans are drawn from a per-seed library
instead of being made per grant, which keeps generation fast and deterministic.
"""

from __future__ import annotations

import random

# Scope sets a grant (or passport) is given; "budget:spend" grants get a budget plan.
SCOPE_SETS: tuple[tuple[str, ...], ...] = (
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

STEP_TOKEN = 0
STEP_BUDGET = 1
STEP_REVOKE = 2
# Who revokes: on the live envelope "system" is an anomaly auto-revocation.
REVOKERS = ("developer",) * 5 + ("principal",) * 4 + ("system",)
TOKEN_STEP = (STEP_TOKEN, 0, 0)
_EXHAUSTED_STEP = (STEP_BUDGET, 100, 0)

Step = tuple[int, int, int]  # (kind, a, b): budget (pct or 100, remaining cents), revoker
Plan = tuple[int, tuple[Step, ...]]  # (initial budget in cents, steps after grant.created)


def make_plan(rng: random.Random, budget: bool) -> Plan:
    """One grant's future: token refreshes, budget debits, maybe a revocation."""
    rand = rng.random
    r = rand()
    n_tokens = 1 if r < 0.5 else (2 if r < 0.85 else 3)
    initial_c = 0
    steps: list[Step] = []
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
                steps.append((STEP_BUDGET, 80, initial_c - consumed))
            elif level >= 0.5:
                steps.append((STEP_BUDGET, 50, initial_c - consumed))
            if level >= stop_level:
                break
    # Tokens get refreshed while the budget is being spent.
    for _ in range(n_tokens):
        steps.insert(int(rand() * (len(steps) + 1)), TOKEN_STEP)
    if rand() < 0.30:
        del steps[int(rand() * (len(steps) + 1)) :]
        steps.append((STEP_REVOKE, int(rand() * len(REVOKERS)), 0))
    return initial_c, tuple(steps)


class PlanLibrary:
    """Plans for one seed: 512 without a budget and 4,096 with one.

    Grants draw their future from this library: planning each grant afresh was a third
    of the cost of generating a large backlog.
    """

    __slots__ = ("budget", "plain")

    def __init__(self, seed: int) -> None:
        planner = random.Random(f"grantex-plans-{seed}")
        self.plain = [make_plan(planner, False) for _ in range(512)]
        self.budget = [make_plan(planner, True) for _ in range(4096)]
