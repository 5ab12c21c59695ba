"""``grantex-archive reconcile`` end to end: the real CLI against a running simulator.

The simulator serves the service's REST state (its own, folded from every event it
emitted); the archive holds only part of those events: a prefix ingested by the real
``ingest`` command, and a later slice written through the store, so that events are
missing from the middle and the end. The findings expected are derived here from the
simulator's events (:func:`fold`, the producer notes' rules) and compared per kind with
what ``reconcile`` recorded, on a SQLite file and on a PostgreSQL schema.
"""

from __future__ import annotations

import json
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.database import create_archive_engine
from ingest.schema import reconcile_findings
from ingest.simulator import Simulator, SimulatorConfig
from ingest.simulator.config import WEBHOOK_TYPES
from ingest.timestamps import format_timestamp, parse_timestamp, utc
from queries import api
from tests.conftest import API_KEY, invoke, rows
from tests.reconcile_scenario import add_events
from tests.simulated_truth import derive

pytestmark = pytest.mark.timeout(180)

BACKLOG = 2000
LIVE = 400
SEED = 5


@dataclass
class View:
    """What a run of events says, by the producer notes' rules, tolerating gaps."""

    created: set[str] = field(default_factory=set)
    first_revoked: dict[str, str] = field(default_factory=dict)  # the stream's rule
    service_revoked: dict[str, str] = field(default_factory=dict)  # the service's revokedAt
    bundles_revoked: set[str] = field(default_factory=set)
    withdrawals: set[str] = field(default_factory=set)  # records with a withdrawal event
    record_status: dict[str, str] = field(default_factory=dict)
    budget_grants: set[str] = field(default_factory=set)


# Kept whole: one dispatch over the event types that say something reconcile reads.
def fold(events: Iterable[dict[str, Any]]) -> View:
    """Fold live-envelope ``events`` (in emission order) into a :class:`View`.

    A grant.revoked or anomaly revokes active grants only (a cascade walks through
    active grants only); a consent-bundle revocation, DPDP withdrawal or erasure also
    names revoked grants, and the service then overwrites its revoked time. An event
    whose creating event is missing (a gap) revokes nothing it cannot name.
    """
    view = View()
    children: dict[str, list[str]] = defaultdict(list)
    bundle_grant: dict[str, str] = {}
    record_grant: dict[str, str] = {}
    principal_records: dict[str, list[str]] = defaultdict(list)

    def revoke(grant_id: str | None, at: str, overwrite: bool = False) -> None:
        if grant_id is None:
            return
        if grant_id not in view.first_revoked:
            view.first_revoked[grant_id] = view.service_revoked[grant_id] = at
        elif overwrite:
            view.service_revoked[grant_id] = at

    for event in events:
        kind, data, at = event["type"], event["data"], event["createdAt"]
        if kind == "grant.created":
            view.created.add(data["grantId"])
            if "parentGrantId" in data:
                children[data["parentGrantId"]].append(data["grantId"])
        elif kind == "grant.revoked":
            revoke(data["grantId"], at)
            todo = list(children[data["grantId"]]) if data["cascade"] else []
            while todo:
                child = todo.pop()
                if child not in view.first_revoked:
                    revoke(child, at)
                    todo.extend(children[child])
        elif kind == "anomaly.auto_revoked":
            for grant_id in data["revokedGrants"]:
                revoke(grant_id, at)
        elif kind == "consent_bundle.created":
            view.created.add(data["grantId"])
            bundle_grant[data["bundleId"]] = data["grantId"]
        elif kind == "consent_bundle.revoked":
            view.bundles_revoked.add(data["bundleId"])
            if data["revokeGrant"]:
                revoke(bundle_grant.get(data["bundleId"]), at, overwrite=True)
        elif kind == "dpdp.consent.created":
            record_grant[data["recordId"]] = data["grantId"]
            principal_records[data["dataPrincipalId"]].append(data["recordId"])
            view.record_status[data["recordId"]] = "active"
        elif kind == "dpdp.consent.withdrawn":
            view.withdrawals.add(data["recordId"])
            view.record_status[data["recordId"]] = "withdrawn"
            if data["grantRevoked"]:
                revoke(record_grant.get(data["recordId"]), at, overwrite=True)
        elif kind == "dpdp.erasure.completed":
            for record_id in principal_records[data["dataPrincipalId"]]:
                view.record_status[record_id] = "erased"
                revoke(record_grant[record_id], at, overwrite=True)
        elif kind in ("budget.threshold", "budget.exhausted"):
            view.budget_grants.add(data["grantId"])
    return view


Expected = dict[str, dict[str, Any]]  # kind -> subject (or grant) -> service time or None


def expected_findings(
    every: list[dict[str, Any]], archived: list[dict[str, Any]], delivered: set[str]
) -> Expected:
    """What reconcile must find: the service's state (all events) less the archive's.

    Budget findings are keyed by grant (the allocation id is the service's own);
    ``delivered`` are the ids of the events the webhook was sent.
    """
    service, known = fold(every), fold(archived)
    archived_ids = {e["id"] for e in archived}
    return {
        "grant_not_created": dict.fromkeys(service.created - known.created),
        "revocation_missing": {
            g: parse_timestamp(at)
            for g, at in service.service_revoked.items()
            if g not in known.first_revoked
        },
        "bundle_revocation_missing": dict.fromkeys(service.bundles_revoked - known.bundles_revoked),
        "dpdp_withdrawal_missing": dict.fromkeys(
            r
            for r, status in service.record_status.items()
            if status == "withdrawn" and r not in known.withdrawals
        ),
        "budget_events_missing": dict.fromkeys(service.budget_grants - known.budget_grants),
        "webhook_event_missing": dict.fromkeys(delivered - archived_ids),
    }


def recorded_findings(url: str, run_id: int) -> Expected:
    """The findings of run ``run_id``, in the shape of :func:`expected_findings`."""
    found: Expected = defaultdict(dict)
    table = reconcile_findings.c
    engine = create_archive_engine(url)
    try:
        with engine.connect() as conn:
            recorded = conn.execute(
                sa.select(table.kind, table.subject_id, table.grant_id, table.service_at).where(
                    table.run_id == run_id
                )
            ).all()
    finally:
        engine.dispose()
    for kind, subject, grant_id, service_at in recorded:
        key = grant_id if kind == "budget_events_missing" else subject
        assert key not in found[kind], (kind, key)
        found[kind][key] = utc(service_at) if kind == "revocation_missing" else None
    return found


def closed_port() -> int:
    """A loopback port nothing listens on: deliveries to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_until(done: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def webhook_events(sim: Simulator) -> set[str]:
    """The ids of the events the simulator's webhook was sent (those after its backlog)."""
    return {e["id"] for e in sim.events()[BACKLOG:] if e["type"] in WEBHOOK_TYPES}


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    """A backlog and a burst of live events, all emitted, with a webhook that always fails."""
    config = SimulatorConfig(
        api_key=API_KEY,
        seed=SEED,
        backlog=BACKLOG,
        backlog_span=6 * 3600.0,
        rate=2000.0,
        total_events=LIVE,
        keepalive=0.5,
        webhook_url=f"http://127.0.0.1:{closed_port()}/hook",
        webhook_secret="0" * 48,
        time_scale=0.01,
        rest_rate_limit=10_000,
    )
    with Simulator(config) as simulator:
        wait_until(lambda: simulator.event_count == BACKLOG + LIVE, "the live events")
        deliverer = simulator.webhook
        assert deliverer is not None
        wanted = len(webhook_events(simulator))
        wait_until(lambda: len(deliverer.deliveries()) == wanted, "the webhook deliveries")
        yield simulator


def ingest(url: str, sim: Simulator, *extra: str) -> None:
    """The real ``ingest`` command: the simulator's history from its start."""
    since = format_timestamp(sim.history_start)
    args = ["ingest", "--db", url, "--base-url", sim.base_url, "--since", since]
    result = invoke([*args, "--until-idle", "1", "--max-runtime", "60", *extra])
    assert result.exit_code == 0, result.output


def reconcile(url: str, sim: Simulator, env: dict[str, str] | None = None, *extra: str) -> str:
    """The real ``reconcile`` command, the key from the environment (or ``extra``)."""
    result = invoke(["reconcile", "--db", url, "--base-url", sim.base_url, *extra], env=env)
    assert result.exit_code == 0, result.output
    assert API_KEY not in result.output
    return result.output


def archived_ids(url: str) -> list[str]:
    return [r[0] for r in rows(url, "SELECT id FROM events ORDER BY seq")]


def printed_counts(output: str) -> dict[str, int]:
    """The per-kind counts ``reconcile`` printed."""
    lines = [line.strip().split(": ") for line in output.splitlines()[1:]]
    return {kind: int(count) for kind, count in lines}


def partial_archive(url: str, sim: Simulator) -> list[dict[str, Any]]:
    """Ingest a prefix with the CLI, write a later slice through the store; the events held.

    The gap is placed around the first DPDP withdrawal and a consent-bundle revocation;
    the archive ends half-way through the live events, so that some delivered events
    are archived and some are not.
    """
    every = sim.events()
    first = min(
        i
        for i, e in enumerate(every)
        if e["type"] == "dpdp.consent.withdrawn" and e["data"]["grantRevoked"]
    )
    gap_start = max(first - 150, 1)
    gap_end = first + 150
    assert any(e["type"] == "consent_bundle.revoked" for e in every[gap_start:gap_end])
    tail = BACKLOG + LIVE // 2
    ingest(url, sim, "--max-events", str(gap_start))
    assert archived_ids(url) == [e["id"] for e in every[:gap_start]]
    add_events(url, [json.dumps(e) for e in every[gap_end:tail]])
    return every[:gap_start] + every[gap_end:tail]


def test_findings_are_what_the_archive_lacks_and_close_once_it_has_it(
    archive_url: str, sim: Simulator, tmp_path: Path
) -> None:
    migrate.upgrade(archive_url)
    every = sim.events()
    assert set(fold(every).first_revoked) == set(derive(every).revoked)  # the oracle agrees
    archived = partial_archive(archive_url, sim)
    expected = expected_findings(every, archived, webhook_events(sim))
    assert all(expected.values()), {k: len(v) for k, v in expected.items()}

    output = reconcile(archive_url, sim)
    assert printed_counts(output) == {k: len(v) for k, v in expected.items()}
    (first_run,) = rows(archive_url, "SELECT id, outcome, findings FROM reconcile_runs")
    assert first_run[1:] == ("completed", sum(len(v) for v in expected.values()))
    found = recorded_findings(archive_url, first_run[0])
    for kind, subjects in expected.items():
        assert found[kind] == subjects, kind
    # Reconcile observes; it never writes events.
    assert len(archived_ids(archive_url)) == len(archived)

    copy = tmp_path / "copy"
    by_via = api.report("revocations-by-actor", archive_url, by="via", analytics_dir=copy)
    counts = {r["via"]: r["revocations"] for r in by_via.to_pylist()}
    assert counts["reconciled"] == len(expected["revocation_missing"])

    ingest(archive_url, sim)
    assert len(archived_ids(archive_url)) == len(every)
    output = reconcile(archive_url, sim)
    assert set(printed_counts(output).values()) == {0}
    table = api.report("reconciliation", archive_url, analytics_dir=copy).to_pylist()
    newest = [r for r in table if r["run_id"] != first_run[0]]
    assert [(r["kind"], r["findings"], r["outcome"]) for r in newest] == [(None, 0, "completed")]
    assert sum(r["still_open"] for r in table) == 0
    assert {r["kind"] for r in table if r["run_id"] == first_run[0]} == set(expected)
    by_via = api.report("revocations-by-actor", archive_url, by="via", analytics_dir=copy)
    assert "reconciled" not in {r["via"] for r in by_via.to_pylist()}
    revoked = sum(r["revocations"] for r in by_via.to_pylist())
    assert revoked == len(derive(every).revoked)


def test_a_rate_limited_service_is_waited_for(
    archive_url: str, tmp_path: Path, key_file: Path
) -> None:
    """Two requests per 1.2 s window: reconcile gets 429s, waits them out and finishes."""
    config = SimulatorConfig(
        api_key=API_KEY, seed=SEED, backlog=400, rate=0, rest_rate_limit=2, time_scale=0.02
    )
    migrate.upgrade(archive_url)
    with Simulator(config) as sim:
        every = sim.events()
        started = time.monotonic()
        output = reconcile(
            archive_url, sim, {"GRANTEX_API_KEY": ""}, "--api-key-file", str(key_file)
        )
        waited = time.monotonic() - started
        served = sim.stats.rest_requests
    expected = expected_findings(every, [], set())
    assert printed_counts(output) == {k: len(v) for k, v in expected.items()}
    ((run_id, requests, outcome),) = rows(
        archive_url, "SELECT id, requests, outcome FROM reconcile_runs"
    )
    assert outcome == "completed" and requests == served
    # Export, bundles, DPDP records, allocations, webhooks: five answers, two per window,
    # so the third and the fifth request are refused at least once and wait for the
    # window to reset, the fifth for one whole window.
    assert requests >= 7 and waited >= 1.2
    assert f" in {requests} requests ({requests - 5} rate-limited, " in output.splitlines()[0]
    found = recorded_findings(archive_url, run_id)
    assert {k: v for k, v in found.items() if v} == {k: v for k, v in expected.items() if v}


def test_a_full_dpdp_listing_is_completed_for_the_principals_the_archive_knows(
    archive_url: str,
) -> None:
    """More than 100 consent records: the listing holds the newest 100, and reconcile asks
    for the records of each data principal the archive has a consent record of. A
    withdrawal of an older record of a principal the archive never saw stays unseen."""
    config = SimulatorConfig(api_key=API_KEY, seed=SEED, backlog=30_000, rate=0)
    migrate.upgrade(archive_url)
    with Simulator(config) as sim:
        every = sim.events()
        created = {e["data"]["recordId"]: e for e in every if e["type"] == "dpdp.consent.created"}
        newest = sorted(created, key=lambda r: created[r]["createdAt"], reverse=True)[:100]
        status = fold(every).record_status
        older = sorted(r for r in created if r not in newest and status[r] == "withdrawn")
        hidden = {created[r]["data"]["dataPrincipalId"] for r in older[::2]}
        archived = [
            e
            for e in every
            if e["type"] != "dpdp.consent.withdrawn"
            and not (e["type"] == "dpdp.consent.created" and e["data"]["dataPrincipalId"] in hidden)
        ]
        add_events(archive_url, [json.dumps(e) for e in archived])
        reconcile(archive_url, sim)
    assert len(created) > 100 and hidden
    expected = expected_findings(every, archived, set())
    known = {e["data"]["dataPrincipalId"] for e in archived if e["type"] == "dpdp.consent.created"}
    withdrawn = expected["dpdp_withdrawal_missing"]
    listed = {r for r in withdrawn if r in newest or created[r]["data"]["dataPrincipalId"] in known}
    assert listed - set(newest) and withdrawn.keys() - listed
    expected["dpdp_withdrawal_missing"] = dict.fromkeys(listed)
    ((run_id,),) = rows(archive_url, "SELECT id FROM reconcile_runs")
    found = recorded_findings(archive_url, run_id)
    for kind, subjects in expected.items():
        assert found[kind] == subjects, kind


def test_events_lost_while_no_client_listened_are_found(archive_url: str) -> None:
    """A service without history: the events emitted between two ingests are lost to the
    stream, and reconcile finds what they changed (and the webhook's copies of them)."""
    config = SimulatorConfig(
        api_key=API_KEY,
        seed=SEED + 1,
        rate=500.0,
        total_events=3000,
        replay="none",
        keepalive=0.5,
        webhook_url=f"http://127.0.0.1:{closed_port()}/hook",
        webhook_secret="0" * 48,
        time_scale=0.01,
        rest_rate_limit=10_000,
    )
    migrate.upgrade(archive_url)
    with Simulator(config) as sim:
        ingest(archive_url, sim, "--max-events", "600")
        # The second ingest connects only after more events were emitted without a client.
        resumed_at = sim.event_count + 200
        wait_until(lambda: sim.event_count >= resumed_at, "events while no client listens")
        ingest(archive_url, sim, "--max-events", "600")
        wait_until(lambda: sim.event_count == 3000, "the live events")
        deliverer = sim.webhook
        assert deliverer is not None
        sent = {e["id"] for e in sim.events() if e["type"] in WEBHOOK_TYPES}
        wait_until(lambda: len(deliverer.deliveries()) == len(sent), "the webhook deliveries")
        output = reconcile(archive_url, sim)
        every = sim.events()
    held = set(archived_ids(archive_url))
    archived = [e for e in every if e["id"] in held]
    # Each ingest stops after 600 events; the second may stop short when generation ends.
    assert len(archived) == len(held) and 600 < len(held) <= 1200
    expected = expected_findings(every, archived, sent)
    assert printed_counts(output) == {k: len(v) for k, v in expected.items()}
    ((run_id,),) = rows(archive_url, "SELECT id FROM reconcile_runs")
    found = recorded_findings(archive_url, run_id)
    for kind, subjects in expected.items():
        assert found[kind] == subjects, kind
    assert expected["grant_not_created"] and expected["webhook_event_missing"]
