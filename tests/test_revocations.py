"""Every way a grant ends revoked, read from the stream: the revocations and grants views.

Hand-built streams in the live service's envelope (and a documented one)
reach the archive through the real CLI from a loopback SSE server or through
the store, on a SQLite file and on a PostgreSQL schema; the views are read
from the analytics copy. The rules are producer-notes.md's, "How a grant ends
revoked" (and ``queries/copy/revocations.py``).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import migrate
from ingest.events import normalise
from ingest.store import Received, Store
from queries.copy import AnalyticsCopy, grant_files
from queries.copy import refresher as refresher_module
from queries.copy.revocations import status_sql
from queries.session import Session
from tests.conftest import invoke
from tests.scripted_server import Reply, ScriptedServer, frame

UTC = timezone.utc
T0 = datetime(2026, 3, 1, tzinfo=UTC)
FUTURE = "2099-01-01T00:00:00.000Z"
PAST = "2020-01-01T00:00:00.000Z"
RECEIVED = datetime(2026, 3, 7, tzinfo=UTC)
DOP = "developer_or_principal"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    return at(seconds).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Stream:
    """Events in the live envelope, numbered in the order they are added (evt_0001 ...)."""

    frames: list[str] = field(default_factory=list)

    def add(self, etype: str, when: float, documented: bool = False, **data: Any) -> str:
        eid = f"evt_{len(self.frames) + 1:04d}"
        key = "timestamp" if documented else "createdAt"
        self.frames.append(json.dumps({"id": eid, "type": etype, key: stamp(when), "data": data}))
        return eid

    def created(
        self,
        grant: str,
        when: float,
        parent: str | None = None,
        depth: int | None = None,
        agent: str = "A1",
        principal: str = "P1",
        expires: str | None = FUTURE,
    ) -> str:
        data: dict[str, Any] = {"grantId": grant, "agentId": agent, "principalId": principal}
        data["scopes"] = ["files:read"]
        if expires is not None:
            data["expiresAt"] = expires
        if depth is not None:
            data["delegationDepth"] = depth
        if parent is not None:
            data["parentGrantId"] = parent
        return self.add("grant.created", when, **data)

    def revoked(self, grant: str, when: float, cascade: bool = False) -> str:
        return self.add("grant.revoked", when, grantId=grant, cascade=cascade)

    def anomaly(self, grants: list[str], when: float) -> str:
        return self.add("anomaly.auto_revoked", when, revokedGrants=grants, anomalyCount=1)

    def bundle(self, bundle: str, grant: str, when: float, user: str = "U1") -> str:
        return self.add(
            "consent_bundle.created",
            when,
            bundleId=bundle,
            agentId="A9",
            grantId=grant,
            userId=user,
        )

    def bundle_revoked(self, bundle: str, when: float, revoke_grant: Any = True) -> str:
        return self.add("consent_bundle.revoked", when, bundleId=bundle, revokeGrant=revoke_grant)

    def consent(self, record: str, grant: str, principal: str, when: float) -> str:
        return self.add(
            "dpdp.consent.created", when, recordId=record, grantId=grant, dataPrincipalId=principal
        )

    def withdrawn(self, record: str, when: float, grant_revoked: bool = True) -> str:
        return self.add(
            "dpdp.consent.withdrawn",
            when,
            recordId=record,
            reason="test",
            grantRevoked=grant_revoked,
            dataDeleted=False,
        )

    def erasure(self, principal: str, when: float) -> str:
        return self.add(
            "dpdp.erasure.completed",
            when,
            requestId=f"ER-{len(self.frames)}",
            dataPrincipalId=principal,
            recordsErased=1,
            grantsRevoked=1,
        )


# --------------------------------------------------------------------------- archives


@pytest.fixture
def url(archive_url: str) -> str:
    """A migrated archive: a SQLite file and a PostgreSQL schema."""
    migrate.upgrade(archive_url)
    return archive_url


def write(url: str, frames: list[str]) -> None:
    """Archive ``frames`` through the real normalisation and store, in one batch."""
    store = Store.open(url)
    try:
        store.write_batch("default", None, [Received(normalise(f), RECEIVED) for f in frames])
    finally:
        store.close()


def ingest(url: str, frames: list[str]) -> None:
    """Archive ``frames`` through the real CLI, from a loopback SSE server."""
    body = b"".join(frame(f) for f in frames)
    with ScriptedServer([Reply(chunks=[body], hold=5, keepalive=0.1)]) as server:
        args = ["ingest", "--db", url, "--base-url", server.base_url]
        result = invoke([*args, "--max-runtime", "20", "--until-idle", "0.5"])
    assert result.exit_code == 0, result.output


def query(copy: AnalyticsCopy, sql: str) -> list[tuple[Any, ...]]:
    session = Session(copy)
    try:
        return session.conn.execute(sql).fetchall()
    finally:
        session.close()


Revocation = tuple[datetime, str, str, str]


def revocations(copy: AnalyticsCopy) -> dict[str, Revocation]:
    """grant -> (revoked_at, actor, via, event_id), from the revocations view."""
    rows = query(copy, "SELECT grant_id, revoked_at, actor, via, event_id FROM revocations")
    assert len(rows) == len({r[0] for r in rows}), "one row per grant"
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}


def refreshed(url: str, directory: Path, full: bool = False) -> AnalyticsCopy:
    copy = AnalyticsCopy(url, directory)
    copy.refresh(full=full)
    return copy


# --------------------------------------------------------------------------- each path


def test_each_path_through_the_cli(url: str, tmp_path: Path) -> None:
    """One stream with every path, and the events that look like one but revoke nothing."""
    s = Stream()
    s.created("gD", 1)
    direct = s.revoked("gD", 10)
    s.add("grant.created", 2, documented=True, grantId="gDoc", agentId="A1", principalId="P1")
    documented = s.add("grant.revoked", 11, documented=True, grantId="gDoc", revokedBy="developer")
    s.created("gA1", 3)
    s.created("gA2", 4)
    anomaly = s.anomaly(["gA1", "gA2"], 12)
    bundle_revokes = {}
    for bundle, grant, flag in [("b1", "gB", True), ("b2", "gB0", False), ("b3", "gB3", 1)]:
        s.bundle(bundle, grant, 6)
        bundle_revokes[bundle] = s.bundle_revoked(bundle, 13, flag)
    for falsy, grant in [(0, "gB4"), ("", "gB5"), (None, "gB6")]:
        s.bundle(f"b-{grant}", grant, 6)
        s.bundle_revoked(f"b-{grant}", 13, falsy)
    s.consent("r1", "gW", "P1", 8)
    withdrawal = s.withdrawn("r1", 14)
    s.consent("r2", "gW0", "P2", 8)
    s.withdrawn("r2", 14.5, grant_revoked=False)
    s.consent("r3", "gE1", "P3", 8.1)
    s.consent("r4", "gE2", "P3", 8.2)
    erasure = s.erasure("P3", 15)
    s.consent("r5", "gE3", "P3", 16)  # after the erasure: not erased
    s.created("gR", 20)
    s.created("gC", 21, parent="gR", depth=1)
    s.created("gG", 22, parent="gC", depth=2)
    root = s.revoked("gR", 30, cascade=True)
    s.created("gR2", 23)
    s.created("gC2", 24, parent="gR2", depth=1)
    r2 = s.revoked("gR2", 31, cascade=False)  # no cascade: gC2 stays active
    ingest(url, s.frames)
    copy = refreshed(url, tmp_path / "copy")
    assert revocations(copy) == {
        "gD": (at(10), DOP, "direct", direct),
        "gDoc": (at(11), "developer", "direct", documented),
        "gA1": (at(12), "system", "anomaly", anomaly),
        "gA2": (at(12), "system", "anomaly", anomaly),
        "gB": (at(13), "developer", "consent_bundle", bundle_revokes["b1"]),
        "gB3": (at(13), "developer", "consent_bundle", bundle_revokes["b3"]),
        "gW": (at(14), "principal", "consent_withdrawal", withdrawal),
        "gE1": (at(15), "principal", "erasure", erasure),
        "gE2": (at(15), "principal", "erasure", erasure),
        "gR": (at(30), DOP, "direct", root),
        "gC": (at(30), DOP, "cascade", root),
        "gG": (at(30), DOP, "cascade", root),
        "gR2": (at(31), DOP, "direct", r2),
    }
    by_via = invoke(["report", "revocations-by-actor", "--db", url, "--analytics-dir",
                     str(tmp_path / "copy"), "--by", "via", "--format", "json"])  # fmt: skip
    assert by_via.exit_code == 0, by_via.output
    assert {r["via"]: r["revocations"] for r in json.loads(by_via.stdout)} == {
        "direct": 4,
        "cascade": 2,
        "anomaly": 2,
        "consent_bundle": 2,
        "erasure": 2,
        "consent_withdrawal": 1,
    }


# --------------------------------------------------------------------------- arrival order


def test_mapping_events_before_their_targets_across_refreshes(url: str, tmp_path: Path) -> None:
    """Each batch is one ingest run and one report; the end equals a full rebuild.

    Batch 1 holds what revokes before what it revokes is known: a grant.revoked
    of a grant not yet created, a consent_bundle.revoked before its
    consent_bundle.created, a withdrawal before its dpdp.consent.created, and a
    cascade on gP before its child's grant.created. Batch 2 brings those.
    Batch 3 brings a grandchild whose grant.created has a time 1 ms after the
    cascade (the service stamps an event when it publishes it, after its
    commit): the cascade covers it, whatever the times say.
    """
    s = Stream()
    direct = s.revoked("gX", 10)
    bundle_revoke = s.bundle_revoked("b1", 11)
    withdrawal = s.withdrawn("r1", 12)
    s.created("gP", 1)
    cascade = s.revoked("gP", 30, cascade=True)
    first = list(s.frames)
    s.created("gX", 2, agent="A2")
    s.bundle("b1", "gB", 3)
    s.consent("r1", "gW", "P1", 4)
    s.created("gK", 25, parent="gP", depth=1)
    second = s.frames[len(first) :]
    s.created("gL", 30.001, parent="gK", depth=2)
    third = s.frames[len(first) + len(second) :]
    copy_dir = str(tmp_path / "copy")

    def report() -> dict[tuple[str, str], int]:
        result = invoke(["report", "revocations-by-actor", "--db", url, "--analytics-dir",
                         copy_dir, "--format", "json"])  # fmt: skip
        assert result.exit_code == 0, result.output
        return {(r["actor"], r["via"]): r["revocations"] for r in json.loads(result.stdout)}

    ingest(url, first)
    assert report() == {(DOP, "direct"): 2}
    ingest(url, second)
    assert report() == {
        (DOP, "direct"): 2,
        (DOP, "cascade"): 1,
        ("developer", "consent_bundle"): 1,
        ("principal", "consent_withdrawal"): 1,
    }
    ingest(url, third)
    assert report()[(DOP, "cascade")] == 2
    incremental = AnalyticsCopy(url, tmp_path / "copy")
    assert revocations(incremental) == {
        "gX": (at(10), DOP, "direct", direct),
        "gB": (at(11), "developer", "consent_bundle", bundle_revoke),
        "gW": (at(12), "principal", "consent_withdrawal", withdrawal),
        "gP": (at(30), DOP, "direct", cascade),
        "gK": (at(30), DOP, "cascade", cascade),
        "gL": (at(30), DOP, "cascade", cascade),
    }
    assert query(incremental, "SELECT agent_id FROM grants WHERE grant_id = 'gX'") == [("A2",)]
    full = refreshed(url, tmp_path / "full", full=True)
    grants = "SELECT * FROM grants ORDER BY grant_id"
    assert query(incremental, grants) == query(full, grants)
    assert revocations(incremental) == revocations(full)


def test_rows_the_rescan_rescues_bring_their_facts(sqlite_archive: str, tmp_path: Path) -> None:
    """A consent_bundle.created committed out of seq order still routes its revoke."""
    import sqlalchemy as sa

    from ingest.schema import events

    migrate.upgrade(sqlite_archive)
    s = Stream()
    s.created("gB", 1)
    s.bundle("b1", "gB", 2)
    revoke = s.bundle_revoked("b1", 3)
    engine = sa.create_engine(sqlite_archive)

    def insert(seq: int, text: str) -> None:
        event = normalise(text)
        row = dict(
            event._asdict(), seq=seq, source="default", received_at=RECEIVED, channel="stream"
        )
        with engine.begin() as conn:
            conn.execute(events.insert(), [{c.name: row.get(c.name) for c in events.columns}])

    insert(1, s.frames[0])
    insert(3, s.frames[2])
    copy = refreshed(sqlite_archive, tmp_path / "copy")
    assert revocations(copy) == {}
    insert(2, s.frames[1])  # seq 2 commits after seq 3 was copied
    result = copy.refresh()
    engine.dispose()
    assert (result.new_rows, result.rescued_rows) == (0, 1)
    assert revocations(copy) == {"gB": (at(3), "developer", "consent_bundle", revoke)}


# --------------------------------------------------------------------------- the property

Action = tuple[Any, ...]


@st.composite
def histories(draw: st.DrawFn) -> list[str]:
    """Grants (some delegated, some never created) and revocations along every path.

    Times come from a small range, so ties in time are common; event ids are
    fixed before the events are shuffled, so they say nothing of arrival.
    """
    count = draw(st.integers(2, 7))
    s = Stream()
    when = st.integers(0, 30)
    for i in range(count):
        parent = draw(st.none() | st.integers(0, i - 1)) if i else None
        if draw(st.integers(0, 5)):  # one grant in six is never created
            depth = None if parent is None else draw(st.none() | st.just(1))
            s.created(f"g{i}", draw(when), f"g{parent}" if parent is not None else None, depth)
    grant = st.integers(0, count - 1).map(lambda i: f"g{i}")
    principal = st.sampled_from(["P1", "P2"])
    actions: list[Action] = draw(
        st.lists(
            st.tuples(st.just("revoked"), grant, when, st.booleans())
            | st.tuples(st.just("anomaly"), st.lists(grant, min_size=1, max_size=3), when)
            | st.tuples(st.just("bundle"), grant, when, when, st.sampled_from([True, 0, "y"]))
            | st.tuples(st.just("consent"), grant, principal, when, when, st.booleans())
            | st.tuples(st.just("erasure"), principal, when),
            max_size=8,
        )
    )
    for n, action in enumerate(actions):
        kind, *args = action
        if kind == "revoked":
            s.revoked(args[0], args[1], cascade=args[2])
        elif kind == "anomaly":
            s.anomaly(args[0], args[1])
        elif kind == "bundle":
            s.bundle(f"b{n}", args[0], args[1])
            s.bundle_revoked(f"b{n}", args[2], args[3])
        elif kind == "consent":
            s.consent(f"r{n}", args[0], args[1], args[2])
            s.withdrawn(f"r{n}", args[3], grant_revoked=args[4])
        else:
            s.erasure(args[0], args[1])
    return draw(st.permutations(s.frames))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite archive to copy for each example."""
    path = tmp_path_factory.mktemp("template") / "archive.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@given(history=histories(), cuts=st.lists(st.floats(0, 1), max_size=4))
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_incremental_refreshes_equal_a_full_build_whatever_the_order(
    template: Path, monkeypatch: pytest.MonkeyPatch, history: list[str], cuts: list[float]
) -> None:
    """Events in any arrival order, split into any refreshes, give the rows of one full build.

    Small segments are merged and the grants delta folded often, so those
    paths are crossed too.
    """
    monkeypatch.setattr(refresher_module, "SMALL_SEGMENTS_MAX", 3)
    monkeypatch.setattr(grant_files, "DELTA_MIN_ROWS", 2)
    monkeypatch.setattr(grant_files, "DELTA_SHARE", 0.2)
    bounds = sorted({0, len(history), *(int(c * len(history)) for c in cuts)})
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        shutil.copy(template, directory / "archive.db")
        url = f"sqlite:///{directory / 'archive.db'}"
        incremental = AnalyticsCopy(url, directory / "inc")
        for lo, hi in itertools.pairwise(bounds):
            write(url, history[lo:hi])
            incremental.refresh()
        full = refreshed(url, directory / "full", full=True)
        for sql in (
            "SELECT * FROM grants ORDER BY grant_id",
            "SELECT * FROM revocations ORDER BY grant_id",
        ):
            assert query(incremental, sql) == query(full, sql)


# --------------------------------------------------------------------------- cascades


def test_a_multi_level_cascade_stops_at_revoked_grants(url: str, tmp_path: Path) -> None:
    """R > A > B > C, A > D, R > E > F; and Q > S > X > Y.

    R's cascade at 20 revokes A; it stops at B (revoked directly at 10, so C
    stays active) and at E (withdrawn at 15, so F stays active); D, revoked
    directly at 25, was revoked first by the cascade. Q's cascade at 5
    revokes S, X and Y; S's own cascade at 8 passes through X (revoked by a
    cascade, not before it in any other way) but its candidates come later:
    Q's event stays first for all three.
    """
    s = Stream()
    for grant, parent, depth in [("R", None, None), ("A", "R", 1), ("B", "A", 2), ("C", "B", 3),
                                 ("D", "A", 2), ("E", "R", 1), ("F", "E", 2), ("Q", None, None),
                                 ("S", "Q", 1), ("X", "S", 2), ("Y", "X", 3)]:  # fmt: skip
        s.created(grant, 1, parent=parent, depth=depth)
    b_direct = s.revoked("B", 10)
    s.consent("rE", "E", "PE", 2)
    e_withdrawn = s.withdrawn("rE", 15)
    root = s.revoked("R", 20, cascade=True)
    s.revoked("D", 25)
    q_root = s.revoked("Q", 5, cascade=True)
    s.revoked("S", 8, cascade=True)
    write(url, s.frames)
    got = revocations(refreshed(url, tmp_path / "copy"))
    assert got == {
        "R": (at(20), DOP, "direct", root),
        "A": (at(20), DOP, "cascade", root),
        "B": (at(10), DOP, "direct", b_direct),
        "D": (at(20), DOP, "cascade", root),
        "E": (at(15), "principal", "consent_withdrawal", e_withdrawn),
        "Q": (at(5), DOP, "direct", q_root),
        "S": (at(5), DOP, "cascade", q_root),
        "X": (at(5), DOP, "cascade", q_root),
        "Y": (at(5), DOP, "cascade", q_root),
    }


@pytest.mark.timeout(60)
def test_a_parent_cycle_ends(url: str, tmp_path: Path) -> None:
    """Malformed events that make A and B each other's parent: the walk ends."""
    s = Stream()
    s.created("A", 1, parent="B")
    s.created("B", 2, parent="A")
    s.created("C", 3, parent="A")
    root = s.revoked("A", 10, cascade=True)
    write(url, s.frames)
    copy = refreshed(url, tmp_path / "copy")
    assert revocations(copy) == {
        "A": (at(10), DOP, "direct", root),
        "B": (at(10), DOP, "cascade", root),
        "C": (at(10), DOP, "cascade", root),
    }
    # No delegationDepth and no chain to a root: the depth is unknown.
    depths = query(copy, "SELECT grant_id, delegation_depth FROM grants ORDER BY 1")
    assert depths == [("A", None), ("B", None), ("C", None)]


# --------------------------------------------------------------------------- first revocation wins


def test_the_first_revocation_wins(url: str, tmp_path: Path) -> None:
    """A later revocation of a revoked grant changes nothing; ties are broken by rule.

    The service overwrites its own revoked time when a withdrawal, an erasure
    or a bundle revoke names a revoked grant: the archive keeps the first.
    """
    s = Stream()
    s.created("g1", 1)
    s.consent("r1", "g1", "P1", 2)
    first = s.revoked("g1", 5)
    s.withdrawn("r1", 10)  # a withdrawal of a grant already revoked
    s.created("g2", 1)
    s.consent("r2", "g2", "P2", 2)
    withdrawn = s.withdrawn("r2", 5)
    s.revoked("g2", 10)  # the reverse order of the same two
    s.created("g3", 1)
    tie_direct = s.revoked("g3", 7)
    s.anomaly(["g3"], 7)  # same instant: the direct revocation comes first
    s.created("g4", 1)
    s.consent("r4", "g4", "P4", 2)
    s.bundle("b4", "g4", 2)
    late_id = s.withdrawn("r4", 7)
    early_id = s.bundle_revoked("b4", 7)  # same instant, same rank: the lower event id
    assert early_id > late_id
    write(url, s.frames)
    got = revocations(refreshed(url, tmp_path / "copy"))
    assert got == {
        "g1": (at(5), DOP, "direct", first),
        "g2": (at(5), "principal", "consent_withdrawal", withdrawn),
        "g3": (at(7), DOP, "direct", tie_direct),
        "g4": (at(7), "principal", "consent_withdrawal", late_id),
    }


def test_an_erasure_revokes_every_grant_of_the_principal(url: str, tmp_path: Path) -> None:
    """P's three consent records before the erasure; one was withdrawn first; one comes after."""
    s = Stream()
    for n in (1, 2, 3, 4):
        s.created(f"g{n}", n, principal="P")
    s.created("other", 1, principal="Q")
    for n in (1, 2, 3):
        s.consent(f"r{n}", f"g{n}", "P", n + 0.5)
    s.consent("rq", "other", "Q", 1.5)
    withdrawn = s.withdrawn("r3", 6)
    erased = s.erasure("P", 10)
    s.consent("r4", "g4", "P", 11)  # consented after the erasure
    again = s.erasure("P", 20)
    write(url, s.frames)
    assert revocations(refreshed(url, tmp_path / "copy")) == {
        "g1": (at(10), "principal", "erasure", erased),
        "g2": (at(10), "principal", "erasure", erased),
        "g3": (at(6), "principal", "consent_withdrawal", withdrawn),
        "g4": (at(20), "principal", "erasure", again),
    }


# --------------------------------------------------------------------------- grant status


def test_grant_status_parent_and_depth(url: str, tmp_path: Path) -> None:
    s = Stream()
    s.created("active", 1)
    s.created("expired", 1, expires=PAST)
    s.created("revoked", 1, expires=PAST)  # expired, but revoked: revoked
    s.revoked("revoked", 2)
    s.add("grant.created", 1, documented=True, grantId="doc", agentId="A1", principalId="P1")
    s.created("child", 2, parent="active", depth=1)
    s.created("grandchild", 3, parent="child")  # no delegationDepth: counted up the chain
    s.created("orphan", 3, parent="never-seen")  # its chain leaves the archive
    s.add("token.issued", 4, tokenId="tok_1", grantId="uncreated", agentId="A1")
    write(url, s.frames)
    rows = query(
        refreshed(url, tmp_path / "copy"),
        "SELECT grant_id, status, parent_grant_id, delegation_depth, expires_at "
        "FROM grants ORDER BY grant_id",
    )
    future, past = datetime(2099, 1, 1, tzinfo=UTC), datetime(2020, 1, 1, tzinfo=UTC)
    assert rows == [
        ("active", "active", None, 0, future),
        ("child", "active", "active", 1, future),
        ("doc", "active", None, 0, None),  # no expiresAt: expiry unknown
        ("expired", "expired", None, 0, past),
        ("grandchild", "active", "child", 2, future),
        ("orphan", "active", "never-seen", None, future),  # its parent: no row
        ("revoked", "revoked", None, 0, past),
        ("uncreated", "active", None, None, None),
    ]


@pytest.mark.parametrize(
    ("revoked_at", "expires_at", "now", "status"),
    [
        (None, None, "2026-03-01", "active"),
        (None, "2026-03-02", "2026-03-01", "active"),
        (None, "2026-03-02", "2026-03-02", "expired"),
        (None, "2026-03-02", "2026-03-03", "expired"),
        ("2026-03-01", "2026-03-02", "2026-03-03", "revoked"),
        ("2026-03-05", "2026-03-02", "2026-03-03", "revoked"),
    ],
)
def test_the_status_rule_at_a_given_time(
    revoked_at: str | None, expires_at: str | None, now: str, status: str
) -> None:
    def ts(value: str | None) -> str:
        return "NULL::TIMESTAMPTZ" if value is None else f"TIMESTAMPTZ '{value}'"

    sql = status_sql(ts(revoked_at), ts(expires_at), ts(now))
    assert duckdb.connect().execute(f"SELECT {sql}").fetchall() == [(status,)]


# --------------------------------------------------------------------------- the capture


def _capture() -> list[str]:
    body = (Path(__file__).parent / "data" / "live-capture-full.sse").read_text()
    return [line[6:] for line in body.splitlines() if line.startswith("data: ")]


def _grant(suffix: str) -> str:
    return f"grnt_01M8{suffix}"


CAPTURE_REVOKED = {
    # grant: (actor, via, the event that revoked it)
    _grant("SXXAM90ZAMVWW8TX8EVQEM"): (DOP, "direct", "evt_01M8SXXBCBRX9XXRK2ANBQ14V9"),
    _grant("SXXAWRF8E4JQVWR6RHEP5T"): (DOP, "direct", "evt_01M8SXXBEGV0S8FC8HX1SKYYQQ"),
    _grant("SXXPXV781QHHQ4DNF9K488"): (DOP, "direct", "evt_01M8SXYHXR9DWW36TVWM3NPANR"),
    _grant("SXYYS0R0DD8GW6YYV6CNR4"): (DOP, "direct", "evt_01M8SXYYT88NZ14TBRTMT3SCGM"),
    _grant("SXYYWDPPEP5JQYM58JB8ZT"): (DOP, "direct", "evt_01M8SXYYXFZZWFPKSW452GFFNY"),
    _grant("SXYYSR0D3NH42JW8Z6A6C5"): (DOP, "cascade", "evt_01M8SXYYT88NZ14TBRTMT3SCGM"),
    _grant("SXXAY00FCDPE4NGHQP3SZB"): ("system", "anomaly", "evt_01M8SXZ7MKRHP78953WT18V2V2"),
    _grant("SXXAZGKQFX0H51CZSQK1NW"): ("system", "anomaly", "evt_01M8SXZ7MKRHP78953WT18V2V2"),
    _grant("SXYYY09YV6962M2SVQYTGT"): ("system", "anomaly", "evt_01M8SXZ7MKRHP78953WT18V2V2"),
    _grant("SY0XEGPV8FPP4ZFGNG05D0"): (
        "principal",
        "consent_withdrawal",
        "evt_01M8SY0XPSV9T308QP1EBMJCQ7",
    ),
    _grant("SY0XGB5A3GVPM9FGW1GF10"): ("principal", "erasure", "evt_01M8SY0XQKDGR0A7X2HC8B05P2"),
    _grant("SY0XT5HF60VDCHQC5ZM38W"): (
        "developer",
        "consent_bundle",
        "evt_01M8SY0XTRN0M8AHK1KKMJKMH7",
    ),
}


@pytest.fixture
def capture(url: str, tmp_path: Path) -> Iterator[list[str]]:
    """The live capture ingested through the real CLI; CLI arguments to read it back."""
    ingest(url, _capture())
    yield ["--db", url, "--analytics-dir", str(tmp_path / "copy")]


def cli_report(args: list[str], name: str, *extra: str) -> list[dict[str, Any]]:
    result = invoke(["report", name, *args, *extra, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    for row in rows:
        # The window reaches past the ingest run's end: a gap, set aside here.
        row.pop("uncovered", None)
    return rows


def test_the_capture_gives_twelve_revoked_grants(capture: list[str], tmp_path: Path) -> None:
    """The 94 events of live-capture-full.sse, derived by hand (line = event's place in it).

    direct, developer_or_principal (grant.revoked carries no revokedBy):
      AM90 (34), AWRF (35), PXV7 (45), YYS0R0 (52, cascade true), YYWDPP (60).
    cascade: YYSR0D, created at 51 with parentGrantId YYS0R0, which 52
      revokes with cascade true; YYSR0D has no child.
    anomaly, system: AY00F, AZGKQ, YYY09, the revokedGrants of 63.
    consent_withdrawal, principal: EGPV, the grant of record crec_..NYDF (76),
      withdrawn with grantRevoked true at 78.
    erasure, principal: GB5A, the grant of user_zed's one record crec_..PCEE
      (77, before the erasure at 80).
    consent_bundle, developer: T5HF, the grant of bundle_..TBTN (86), revoked
      with revokeGrant true at 87; its grant.created is not in the stream
      (consent-bundle grants get none), its agent comes from 86.
    That is 12 grants: the capture holds every revocation of that run of the
    service, the one a restarted worker missed included (with it missing,
    the old reports counted 7 of the 11 the archive held: 4 direct and 3
    anomaly). The other 12 grants of the capture are not revoked, and their
    expiresAt (2026-12-02, 00:09 to 01:11 UTC) makes them expired or active.
    """
    copy = AnalyticsCopy(capture[1], Path(capture[3]))
    copy.refresh()
    got = revocations(copy)
    assert {g: row[1:] for g, row in got.items()} == CAPTURE_REVOKED
    rows = query(copy, "SELECT grant_id, status, expires_at FROM grants")
    now = datetime.now(UTC)
    assert len(rows) == 24
    for grant, status, expires in rows:
        if grant in CAPTURE_REVOKED:
            assert status == "revoked", grant
        else:
            assert status == ("expired" if expires <= now else "active"), grant
    # Delegation: B4V1 (depth 1, parent APHW), B5VE (depth 2, parent B4V1), YYSR0D.
    delegated = query(
        copy,
        "SELECT grant_id, parent_grant_id, delegation_depth FROM grants "
        "WHERE parent_grant_id IS NOT NULL ORDER BY delegation_depth, grant_id",
    )
    assert delegated == [
        (_grant("SXXB4V1AVWCP60QWXPDSVJ"), _grant("SXXAPHWHHTEKSWAP42DES3"), 1),
        (_grant("SXYYSR0D3NH42JW8Z6A6C5"), _grant("SXYYS0R0DD8GW6YYV6CNR4"), 1),
        (_grant("SXXB5VETD4E80C4KHJ5BPN"), _grant("SXXB4V1AVWCP60QWXPDSVJ"), 2),
    ]
    # views.sql opens the same views in any DuckDB session.
    plain = duckdb.connect()
    plain.execute((Path(capture[3]) / "views.sql").read_text())
    assert plain.execute("SELECT count(*) FROM revocations").fetchall() == [(12,)]


def test_the_capture_s_reports(capture: list[str]) -> None:
    """revocations-by-actor, grant-lifetime and top-agents on the capture, by hand.

    Lifetimes (revoked_at - created_at, s): YYSR0D 0.008, T5HF 0.009 (a
    consent-bundle grant: created by its consent_bundle.created at
    23:11:18.351, revoked by consent_bundle.revoked at .360), YYWDPP 0.028,
    YYS0R0 0.035, GB5A 0.216, EGPV 0.242, AWRF 0.556, AM90 0.744, YYY09
    8.911, PXV7 27.633, AZGKQ 62.103, AY00F 62.149. Twelve: the median is
    (0.242 + 0.556) / 2 = 0.399, p90 (interpolated at 9.9 of 0..11) is
    27.633 + 0.9 * (62.103 - 27.633) = 58.656.
    Agents (grants; revoked; exhausted; tokens): AB19 6 (AGT3 AM90 PXV7
    YYS0R0 EGPV D1NA); 4; 3 (AGT3 AM90 D1NA); 11 (AGT3 has 5). AC1H 6 (ATK5
    AWRF B5VE HWPT YYWDPP HSCM); 2; 2 (ATK5 HSCM); 6. ABQX 5 (APHW AS4H PZZW
    YYTT GB5A); 1; 1 (YYTT); 6. ADYG 3; 3; 0; 3. ACTH 3 (B4V1 YYSR0D JTY3);
    1; 0; 3. EMKW 1 (T5HF, from consent_bundle.created); 1; 0; 0.
    """
    assert cli_report(capture, "revocations-by-actor") == [
        {"actor": DOP, "via": "direct", "revocations": 5, "share": 5 / 12},
        {"actor": "system", "via": "anomaly", "revocations": 3, "share": 3 / 12},
        {"actor": "developer", "via": "consent_bundle", "revocations": 1, "share": 1 / 12},
        {"actor": DOP, "via": "cascade", "revocations": 1, "share": 1 / 12},
        {"actor": "principal", "via": "consent_withdrawal", "revocations": 1, "share": 1 / 12},
        {"actor": "principal", "via": "erasure", "revocations": 1, "share": 1 / 12},
    ]
    lifetime = {(r["actor"], r["via"]): r for r in cli_report(capture, "grant-lifetime")}
    assert lifetime["all", "all"]["grants"] == 12
    assert lifetime["all", "all"]["without_created"] == 0
    assert lifetime["all", "all"]["median_seconds"] == pytest.approx(0.399, abs=1e-6)
    assert lifetime["all", "all"]["p90_seconds"] == pytest.approx(58.656, abs=1e-6)
    assert lifetime[DOP, "direct"]["median_seconds"] == pytest.approx(0.556, abs=1e-3)
    assert lifetime[DOP, "cascade"]["median_seconds"] == pytest.approx(0.008, abs=1e-3)
    assert lifetime["system", "anomaly"]["median_seconds"] == pytest.approx(62.103, abs=1e-3)
    assert lifetime["developer", "consent_bundle"]["grants"] == 1
    assert lifetime["developer", "consent_bundle"]["without_created"] == 0
    assert lifetime["developer", "consent_bundle"]["median_seconds"] == pytest.approx(
        0.009, abs=1e-6
    )
    top = cli_report(capture, "top-agents")
    got = [(r["rank"], r["agent_id"][-4:], r["grants"], r["revoked"], r["exhausted"], r["tokens"])
           for r in top]  # fmt: skip
    assert got == [
        (1, "Q1JW", 6, 4, 3, 11),
        (1, "CDGK", 6, 2, 2, 6),
        (3, "BXWR", 5, 1, 1, 6),
        (4, "5HY3", 3, 3, 0, 3),
        (4, "383V", 3, 1, 0, 3),
        (6, "SBBJ", 1, 1, 0, 0),
    ]
