"""Every way a grant ends revoked, and true token ids, in the simulator's live envelope.

A 20,000-event live run (seed 1) is checked against the live service's event catalogue
(producer-notes.md: field names and JSON types), against the rules an archive uses to
recover revocations from the stream (tests/simulated_truth.py, written from the notes
alone) and against the generator's own ground truth. The seed is one whose run meets
every edge case: a cascade stopping at a grant revoked earlier among them.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import datetime, timezone
from typing import Any

import pytest

from ingest.simulator import (
    TOKEN_KINDS,
    VIAS,
    GroundTruth,
    Simulator,
    SimulatorConfig,
    generate_events,
    ground_truth,
)
from ingest.simulator.grants import Grant, GrantPool
from ingest.simulator.ids import UlidSource, ulid_ms
from ingest.simulator.plans import STEP_BUDGET, STEP_REVOKE, TOKEN_STEP, PlanLibrary
from ingest.simulator.truth import TruthLog
from ingest.timestamps import parse_event_time
from tests.simulated_truth import derive

SEED, COUNT, SPACING = 1, 20_000, 0.1
START = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)

S, N, B, L = str, int, bool, list  # JSON string, number (integer here), boolean, array
CATALOGUE: dict[str, tuple[dict[str, type], dict[str, type]]] = {
    # type: (fields always present, fields sometimes present), as producer-notes.md lists them
    "grant.created": (
        {"grantId": S, "agentId": S, "principalId": S, "scopes": L, "expiresAt": S},
        {"delegationDepth": N, "parentGrantId": S},
    ),
    "token.issued": (
        {"tokenId": S, "grantId": S, "agentId": S, "principalId": S, "scopes": L, "expiresAt": S},
        {},
    ),
    "grant.revoked": ({"grantId": S, "cascade": B}, {}),
    "budget.threshold": ({"grantId": S, "pct": N, "remaining": S}, {}),
    "budget.exhausted": ({"grantId": S, "remaining": S}, {}),
    "anomaly.auto_revoked": ({"revokedGrants": L, "anomalyCount": N}, {}),
    "consent_bundle.created": ({"bundleId": S, "agentId": S, "grantId": S, "userId": S}, {}),
    "consent_bundle.synced": ({"bundleId": S, "accepted": N}, {}),
    "consent_bundle.revoked": ({"bundleId": S, "revokeGrant": B}, {}),
    "dpdp.consent.created": ({"recordId": S, "grantId": S, "dataPrincipalId": S}, {}),
    "dpdp.consent.withdrawn": (
        {"recordId": S, "reason": S, "grantRevoked": B, "dataDeleted": B},
        {},
    ),
    "dpdp.erasure.completed": (
        {"requestId": S, "dataPrincipalId": S, "recordsErased": N, "grantsRevoked": N},
        {},
    ),
    "passport.issued": ({"passportId": S, "agentId": S, "grantId": S, "categories": L}, {}),
    "sso.login": ({"connectionId": S, "protocol": S, "sessionId": S, "email": S}, {}),
    "vault.credential.stored": ({"credentialId": S, "principalId": S, "service": S}, {}),
}
EDGE_CASES = (
    "multi-level cascade",
    "cascade stopped at a revoked grant",
    "anomaly parent with an active child",
    "bundle revoked, grant kept",
    "consent_bundle of a revoked grant",
    "withdrawal, grant kept",
    "consent_withdrawal of a revoked grant",
    "erasure of several grants",
    "erasure of a revoked grant",
)


@pytest.fixture(scope="module")
def run() -> tuple[list[dict[str, Any]], GroundTruth]:
    events = list(generate_events(SEED, START, COUNT, SPACING, "live"))
    return events, ground_truth(SEED, START, COUNT, SPACING, "live")


def test_every_event_has_the_live_catalogue_shape(
    run: tuple[list[dict[str, Any]], GroundTruth],
) -> None:
    events, _ = run
    seen: Counter[str] = Counter()
    for event in events:
        assert set(event) == {"id", "type", "createdAt", "data"}
        required, optional = CATALOGUE[event["type"]]
        data = event["data"]
        assert set(required) <= set(data) <= set(required) | set(optional), event
        for name, value in data.items():
            kind = {**required, **optional}[name]
            # bool is an int in Python: the JSON type must be exactly the catalogue's.
            assert type(value) is kind, (event, name)
            if isinstance(value, list):
                assert value and all(type(item) is S for item in value), event
        seen[event["type"]] += 1
    assert set(seen) == set(CATALOGUE)
    # Sensible rates: lifecycles dominate, every other path is there more than a few times.
    assert seen["grant.created"] > 4000 and seen["token.issued"] > 6000
    assert min(seen.values()) >= 10, seen


def test_every_revocation_path_appears_and_the_truth_follows_the_rules(
    run: tuple[list[dict[str, Any]], GroundTruth],
) -> None:
    events, truth = run
    derived = derive(events)
    assert {
        grant_id: (r.revoked_at, r.via, r.event_id) for grant_id, r in truth.revocations.items()
    } == {
        grant_id: (parse_event_time(when), via, event_id)
        for grant_id, (when, via, event_id) in derived.revoked.items()
    }
    vias = Counter(r.via for r in truth.revocations.values())
    assert set(vias) == set(VIAS)
    assert min(vias.values()) >= 10, vias
    missing = [case for case in EDGE_CASES if not derived.cases[case]]
    assert not missing, derived.cases
    actors = {(r.via, r.actor) for r in truth.revocations.values()}
    assert {a for v, a in actors if v in ("direct", "cascade")} == {"developer", "principal"}
    assert {(v, a) for v, a in actors if v not in ("direct", "cascade")} == {
        ("anomaly", "system"),
        ("consent_bundle", "developer"),
        ("consent_withdrawal", "principal"),
        ("erasure", "principal"),
    }


def test_each_revoking_event_maps_to_its_grants_in_the_truth(
    run: tuple[list[dict[str, Any]], GroundTruth],
) -> None:
    events, truth = run
    revoked = truth.revocations
    by_event: dict[str, set[str]] = defaultdict(set)
    for grant_id, r in revoked.items():
        by_event[r.event_id].add(grant_id)
    children: dict[str, list[str]] = defaultdict(list)
    bundles: dict[str, str] = {}
    records: dict[str, str] = {}
    principal_grants: dict[str, set[str]] = defaultdict(set)
    for event in events:
        data, named = event["data"], by_event.get(event["id"], set())
        at = parse_event_time(event["createdAt"])
        kind = event["type"]
        if kind == "grant.created" and "parentGrantId" in data:
            children[data["parentGrantId"]].append(data["grantId"])
        elif kind == "grant.revoked":
            assert revoked[data["grantId"]].via == "direct"
            descendants = _descendants(children, data["grantId"])
            taken = named - {data["grantId"]}
            assert taken <= descendants and data["cascade"] == bool(taken)
            assert all(revoked[g].via == "cascade" for g in taken)
            # Descendants it did not take were revoked before, or sit below one that was.
            assert all(revoked[g].revoked_at <= at for g in descendants - taken if g in revoked)
        elif kind == "anomaly.auto_revoked":
            assert named == set(data["revokedGrants"])
        elif kind == "consent_bundle.created":
            bundles[data["bundleId"]] = data["grantId"]
        elif kind == "consent_bundle.revoked":
            _check_named(revoked, named, {bundles[data["bundleId"]]}, data["revokeGrant"], at)
        elif kind == "dpdp.consent.created":
            records[data["recordId"]] = data["grantId"]
            principal_grants[data["dataPrincipalId"]].add(data["grantId"])
        elif kind == "dpdp.consent.withdrawn":
            _check_named(revoked, named, {records[data["recordId"]]}, data["grantRevoked"], at)
        elif kind == "dpdp.erasure.completed":
            _check_named(revoked, named, principal_grants[data["dataPrincipalId"]], True, at)
        else:
            assert not named, event


def _descendants(children: dict[str, list[str]], root: str) -> set[str]:
    found: set[str] = set()
    stack = list(children[root])
    while stack:
        grant_id = stack.pop()
        found.add(grant_id)
        stack.extend(children[grant_id])
    return found


def _check_named(
    revoked: dict[str, Any], named: set[str], grants: set[str], revokes: bool, at: datetime
) -> None:
    """The event revoked exactly those of ``grants`` not revoked before (none if not ``revokes``)."""
    if not revokes:
        assert not named
        return
    assert named <= grants
    for grant_id in grants - named:
        assert revoked[grant_id].revoked_at <= at


def test_token_ids_follow_the_live_rule(run: tuple[list[dict[str, Any]], GroundTruth]) -> None:
    events, truth = run
    parents = {
        e["data"]["grantId"]: e["data"].get("parentGrantId")
        for e in events
        if e["type"] == "grant.created"
    }
    bundled = {e["data"]["grantId"] for e in events if e["type"] == "consent_bundle.created"}
    tokens = [e for e in events if e["type"] == "token.issued"]
    assert {e["data"]["tokenId"] for e in tokens} == set(truth.token_kinds)
    kinds: Counter[str] = Counter()
    initial: Counter[str] = Counter()
    for event in tokens:
        token_id, grant_id = event["data"]["tokenId"], event["data"]["grantId"]
        token_ms = ulid_ms(token_id.removeprefix("tok_"))
        grant_ms = ulid_ms(grant_id.removeprefix("grnt_"))
        assert token_ms is not None and grant_ms is not None
        created_ms = parse_event_time(event["createdAt"]).timestamp() * 1000
        assert grant_ms <= token_ms <= created_ms  # made before the event that announces it
        kind = truth.token_kinds[token_id]
        kinds[kind] += 1
        if kind == "refresh":
            assert token_ms - grant_ms >= 1000, event
        else:
            assert token_ms - grant_ms <= 2, event
            assert kind == ("delegation" if parents[grant_id] else "exchange")
            initial[grant_id] += 1
        assert grant_id not in bundled
    assert set(kinds) == set(TOKEN_KINDS)
    assert max(initial.values()) == 1
    assert kinds["refresh"] > 1000 and kinds["delegation"] > 100


def test_documented_tokens_keep_their_method() -> None:
    events = list(generate_events(SEED, START, 3000, SPACING, "mixed"))
    truth = ground_truth(SEED, START, 3000, SPACING, "mixed")
    documented = [e for e in events if e["type"] == "token.issued" and "timestamp" in e]
    assert documented
    for event in documented:
        assert truth.token_kinds[event["data"]["tokenId"]] == event["data"]["method"]
    assert {e["data"]["method"] for e in documented} == {"exchange", "refresh"}


def test_ground_truth_is_deterministic_and_is_the_backlogs() -> None:
    first = ground_truth(4, START, 5000, 0.5)
    assert first == ground_truth(4, START, 5000, 0.5)
    assert first.revocations.keys() != ground_truth(5, START, 5000, 0.5).revocations.keys()
    config = SimulatorConfig(api_key="k", seed=4, backlog=5000, backlog_span=2500.0, rate=0.0)
    with Simulator(config) as sim:
        truth = sim.backlog_truth()
        assert truth == ground_truth(4, sim.history_start, 5000, 0.5)
        events = sim.events()
    assert {r.event_id for r in truth.revocations.values()} <= {e["id"] for e in events}
    assert set(truth.token_kinds) == {
        e["data"]["tokenId"] for e in events if e["type"] == "token.issued"
    }


# --------------------------------------------------------------------------- the pool's rules


def _pool() -> tuple[GrantPool, TruthLog]:
    rng = random.Random(0)
    pool = GrantPool(rng, UlidSource(rng), "live", ["ag_a", "ag_b"], ["user_a"], {}, PlanLibrary(0))
    log = pool.truth = TruthLog()
    return pool, log


def _grant(pool: GrantPool, name: str, agent: str, parent: Grant | None = None) -> Grant:
    grant = Grant(name, 0, agent, "user_a", ("files:read",), False, 0 if parent is None else 1)
    if parent is not None:
        parent.children.append(grant)
    grant.steps = [(STEP_REVOKE, 0, 0)]  # REVOKERS[0]: the developer
    pool.pool.append(grant)
    return grant


def test_a_cascade_walks_only_through_grants_not_revoked_yet() -> None:
    pool, log = _pool()
    root = _grant(pool, "root", "ag_a")
    withdrawn = _grant(pool, "withdrawn", "ag_b", root)
    below = _grant(pool, "below", "ag_a", withdrawn)
    sibling = _grant(pool, "sibling", "ag_b", root)
    leaf = _grant(pool, "leaf", "ag_a", sibling)
    # A DPDP withdrawal revokes one grant and never cascades.
    assert pool.mark_revoked(withdrawn, 100, "consent_withdrawal", "principal", 0)
    out: list[Any] = []
    assert pool.advance(root, 200, out)
    assert out == [(200, "grant.revoked", False, '{"grantId":"root","cascade":true}')]
    assert [(g, via) for g, _, via, _, _ in log.revocations] == [
        ("withdrawn", "consent_withdrawal"),
        ("root", "direct"),
        ("sibling", "cascade"),
        ("leaf", "cascade"),
    ]
    assert not below.revoked and pool.pool == [below]
    assert not pool.mark_revoked(leaf, 300, "erasure", "principal", 0)  # the first one counts
    # Nothing left to take below: the flag says so.
    out.clear()
    assert pool.advance(below, 400, out)
    assert out[0][3] == '{"grantId":"below","cascade":false}'


def test_an_anomaly_takes_the_agents_active_grants_not_their_children() -> None:
    pool, log = _pool()
    flagged = _grant(pool, "flagged", "ag_a")
    child = _grant(pool, "child", "ag_b", flagged)
    _grant(pool, "other", "ag_a")
    expired = _grant(pool, "expired", "ag_a")
    expired.expires_ms = 50
    out: list[Any] = []
    pool.anomaly(flagged, 100, out)
    assert out[0][1] == "anomaly.auto_revoked"
    assert out[0][3].startswith('{"revokedGrants":["flagged","other"],"anomalyCount":')
    assert [(g, via, actor) for g, _, via, actor, _ in log.revocations] == [
        ("flagged", "anomaly", "system"),
        ("other", "anomaly", "system"),
    ]
    assert not child.revoked and not expired.revoked


def test_a_refresh_waits_until_it_is_due() -> None:
    pool, log = _pool()
    grant = _grant(pool, "g", "ag_a")
    grant.gid_ms = 1_000_000
    grant.steps = [TOKEN_STEP, (STEP_BUDGET, 50, 500), TOKEN_STEP]  # reversed: a refresh is next
    out: list[Any] = []
    # Too early for the refresh: the budget step goes first, then nothing is due.
    assert pool.advance(grant, 1_000_500, out)
    assert [e[1] for e in out] == ["budget.threshold"]
    assert not pool.advance(grant, 1_001_000, out)
    assert pool.advance(grant, 1_001_012, out)
    assert out[-1][1] == "token.issued"
    assert list(log.tokens.values()) == ["refresh"]
    token_ms = ulid_ms(next(iter(log.tokens)).removeprefix("tok_"))
    assert token_ms is not None and token_ms - grant.gid_ms >= 1000
