"""``grantex-archive reconcile``: the service's REST state against the archive.

A loopback server serves the service's endpoints (:mod:`tests.scripted_rest`)
with the state of :mod:`tests.reconcile_scenario`; the archive is a real
SQLite file or PostgreSQL schema.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from ingest import migrate
from ingest.clock import ManualClock
from ingest.database import create_archive_engine
from ingest.reconcile import (
    ReconcileSettings,
    ServiceAuthError,
    ServiceUnavailable,
    run_reconcile,
)
from ingest.reconcile.archive import read_knowledge
from ingest.reconcile.client import RATE_LIMIT_ATTEMPTS, rate_limit_delay
from ingest.reconcile.lock import reconcile_lock
from ingest.schema import reconcile_runs
from ingest.settings import Secret
from ingest.timestamps import parse_timestamp
from queries import api
from tests import reconcile_scenario as scenario
from tests.conftest import API_KEY, invoke, rows
from tests.reconcile_scenario import T0, T1, T2
from tests.reconcile_scenario import event as _frame
from tests.scripted_rest import Answer, RestServer

EXPORT = "/v1/compliance/export/grants"


def _settings(url: str, server: RestServer) -> ReconcileSettings:
    return ReconcileSettings(db_url=url, base_url=server.url, api_key=Secret(API_KEY))


@pytest.fixture
def reconciled_archive(archive_url: str) -> str:
    scenario.build_archive(archive_url)
    return archive_url


def test_every_finding_kind_is_recorded_with_its_endpoint(reconciled_archive: str) -> None:
    clock = ManualClock()
    with RestServer(scenario.service_routes()) as server:
        result = run_reconcile(_settings(reconciled_archive, server), clock)
    assert {(f.kind, f.subject_id) for f in result.findings} == scenario.EXPECTED
    stored = rows(
        reconciled_archive,
        "SELECT kind, subject_id, endpoint, grant_id, service_status, run_id "
        "FROM reconcile_findings",
    )
    assert {(r[0], r[1]) for r in stored} == scenario.EXPECTED
    by_subject = {r[1]: r for r in stored}
    assert by_subject["g4"][2] == EXPORT
    assert by_subject["b1"][2:5] == ("/v1/consent-bundles", "g7", "revoked")
    assert by_subject["r1"][2:5] == ("/v1/dpdp/consent-records", "g4", "withdrawn")
    assert by_subject["ba1"][2:5] == ("/v1/budget/allocations", "g1", "spent_50")
    assert by_subject["evt_9001"][2] == "/v1/webhooks/wh1/deliveries"
    (run,) = rows(
        reconciled_archive,
        "SELECT id, outcome, findings, observed, requests, source FROM reconcile_runs",
    )
    assert run[0] == result.run_id and {r[5] for r in stored} == {run[0]}
    assert run[1:3] == ("completed", len(scenario.EXPECTED))
    observed = (
        len(scenario.GRANTS)
        + len(scenario.BUNDLES)
        + len(scenario.RECORDS)
        + len(scenario.ALLOCATIONS)
        + len(scenario.DELIVERIES)
    )
    assert run[3:] == (observed, result.requests, "default")
    # No events are made up from what the service showed.
    assert rows(reconciled_archive, "SELECT count(*) FROM events")[0][0] == len(scenario.ARCHIVED)


def test_pages_are_followed_by_cursor_and_by_number(reconciled_archive: str) -> None:
    with RestServer(scenario.service_routes()) as server:
        run_reconcile(_settings(reconciled_archive, server), ManualClock())
    bundles = [s.query for s in server.requests if s.path == "/v1/consent-bundles"]
    assert bundles == [{"limit": "100"}, {"limit": "100", "cursor": bundles[1]["cursor"]}]
    pages = [s.query for s in server.requests if s.path.endswith("/deliveries")]
    assert pages == [{"page": "1", "pageSize": "100"}, {"page": "2", "pageSize": "100"}]
    assert {s.headers["authorization"] for s in server.requests} == {f"Bearer {API_KEY}"}


def test_a_429_waits_for_retry_after_on_the_injected_clock(reconciled_archive: str) -> None:
    clock = ManualClock()
    with RestServer(scenario.service_routes()) as server:
        server.refusals[EXPORT] = [
            (429, {"Retry-After": "7"}, {"code": "RATE_LIMIT_EXCEEDED"}),
            (503, {}, {"code": "RATE_LIMIT_UNAVAILABLE"}),
        ]
        result = run_reconcile(_settings(reconciled_archive, server), clock)
    assert server.paths()[:3] == [EXPORT] * 3
    assert clock.sleeps == [7.0, 2.0]  # Retry-After, then the doubling delay after one failure
    assert {(f.kind, f.subject_id) for f in result.findings} == scenario.EXPECTED


@pytest.mark.parametrize(
    ("status", "retry_after", "failures", "delay"),
    [
        (429, "7", 0, 7.0),
        (429, "Wed, 02 Dec 2026 00:00:30 GMT", 0, 30.0),
        (429, None, 0, 1.0),
        (503, None, 3, 8.0),
        (504, None, 0, 1.0),
        (429, None, 10, None),
        (429, "5", RATE_LIMIT_ATTEMPTS - 1, None),
        (500, "5", 0, None),
        (404, None, 0, None),
    ],
)
def test_rate_limit_delay(
    status: int, retry_after: str | None, failures: int, delay: float | None
) -> None:
    now = 1_796_169_600.0  # 2026-12-02T00:00:00Z
    assert rate_limit_delay(status, retry_after, failures, now) == delay


def test_a_rate_limit_that_never_lifts_fails_the_run(reconciled_archive: str) -> None:
    clock = ManualClock()
    with RestServer(scenario.service_routes()) as server:
        server.refusals[EXPORT] = [(429, {"Retry-After": "1"}, {})] * RATE_LIMIT_ATTEMPTS
        with pytest.raises(ServiceUnavailable, match="429"):
            run_reconcile(_settings(reconciled_archive, server), clock)
    assert len(clock.sleeps) == RATE_LIMIT_ATTEMPTS - 1
    assert rows(reconciled_archive, "SELECT outcome, findings FROM reconcile_runs") == [
        ("failed", 0)
    ]
    assert rows(reconciled_archive, "SELECT count(*) FROM reconcile_findings")[0][0] == 0


def test_a_rejected_key_raises_auth_error(reconciled_archive: str) -> None:
    with RestServer(scenario.service_routes()) as server:
        server.refusals[EXPORT] = [(401, {}, {"code": "UNAUTHORIZED"})]
        with pytest.raises(ServiceAuthError):
            run_reconcile(_settings(reconciled_archive, server), ManualClock())


def test_findings_close_once_the_archive_has_the_events(reconciled_archive: str) -> None:
    with RestServer(scenario.service_routes()) as server:
        run_reconcile(_settings(reconciled_archive, server), ManualClock())
        scenario.add_events(reconciled_archive, scenario.CLOSING)
        second = run_reconcile(_settings(reconciled_archive, server), ManualClock())
    assert {(f.kind, f.subject_id) for f in second.findings} == scenario.EXPECTED - {
        ("revocation_missing", "g4"),
        ("dpdp_withdrawal_missing", "r1"),
    }


def test_cli_reconcile_prints_counts_and_never_the_key(
    reconciled_archive: str, key_file: Path
) -> None:
    with RestServer(scenario.service_routes()) as server:
        args = ["reconcile", "--db", reconciled_archive, "--base-url", server.url]
        result = invoke([*args, "--api-key-file", str(key_file)], env={"GRANTEX_API_KEY": ""})
    assert result.exit_code == 0, result.output
    assert "9 findings" in result.output
    assert "  revocation_missing: 3\n" in result.output
    assert API_KEY not in result.output


@pytest.mark.parametrize(
    ("refusal", "code", "message"),
    [
        ((401, {}, {"code": "UNAUTHORIZED"}), 3, f"GET {EXPORT}: the service answered 401"),
        ((500, {}, {}), 69, f"GET {EXPORT}: the service answered 500"),
        ((400, {}, {}), 1, f"GET {EXPORT}: the service answered 400"),
    ],
)
def test_cli_exit_codes(
    sqlite_archive: str, refusal: tuple[int, dict[str, str], object], code: int, message: str
) -> None:
    scenario.build_archive(sqlite_archive)
    with RestServer(scenario.service_routes()) as server:
        server.refusals[EXPORT] = [refusal]
        result = invoke(["reconcile", "--db", sqlite_archive, "--base-url", server.url])
    assert result.exit_code == code
    assert result.output.strip().splitlines()[-1] == f"Error: {message}"
    assert API_KEY not in result.output


def test_cli_without_archive_creates_none(sqlite_archive: str, tmp_path: Path) -> None:
    missing = tmp_path / "archive.db"
    result = invoke(["reconcile", "--db", sqlite_archive, "--base-url", "http://127.0.0.1:9"])
    assert result.exit_code == 4
    assert result.output == f"Error: no archive at {missing}: run `grantex-archive ingest` first\n"
    assert not missing.exists()


def test_cli_without_key_or_service(sqlite_archive: str) -> None:
    scenario.build_archive(sqlite_archive)
    no_key = invoke(["reconcile", "--db", sqlite_archive], env={"GRANTEX_API_KEY": ""})
    assert no_key.exit_code == 2
    assert "no API key" in no_key.output
    unreachable = invoke(["reconcile", "--db", sqlite_archive, "--base-url", "http://127.0.0.1:9"])
    assert unreachable.exit_code == 69
    assert unreachable.output.startswith(f"Error: GET {EXPORT}: ConnectError")


def _reconcile_twice(url: str) -> None:
    """A run on the scenario, then one after the archive got two of the missing events."""
    with RestServer(scenario.service_routes()) as server:
        run_reconcile(_settings(url, server), ManualClock())
        scenario.add_events(url, scenario.CLOSING)
        run_reconcile(_settings(url, server), ManualClock())


def test_grants_view_carries_the_services_status(reconciled_archive: str, tmp_path: Path) -> None:
    with RestServer(scenario.service_routes()) as server:
        run_reconcile(_settings(reconciled_archive, server), ManualClock())
    table = api.query(
        "SELECT grant_id, status, service_status, revoked_by, revoked_via, revoked_at, agent_id "
        "FROM grants WHERE grant_id IN ('g1', 'g4', 'g5', 'g6', 'g7') ORDER BY grant_id",
        reconciled_archive,
        analytics_dir=tmp_path / "copy",
    )
    t1, t2 = parse_timestamp(scenario.T1), parse_timestamp(scenario.T2)
    assert [tuple(r.values()) for r in table.to_pylist()] == [
        ("g1", "revoked", None, "developer_or_principal", "direct", t1, "ag1"),
        ("g4", "revoked", "revoked", "unknown", "reconciled", t2, "ag2"),
        # Never seen created: a row from what the service listed.
        ("g5", "active", "active", None, None, None, "ag1"),
        ("g6", "revoked", "revoked", "unknown", "reconciled", t2, "ag1"),
        ("g7", "revoked", "revoked", "unknown", "reconciled", t2, "ag1"),
    ]


def test_revocations_by_actor_counts_reconciled_revocations(
    reconciled_archive: str, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    before = api.report("revocations-by-actor", reconciled_archive, by="via", analytics_dir=copy)
    _reconcile_twice(reconciled_archive)
    after = api.report("revocations-by-actor", reconciled_archive, by="via", analytics_dir=copy)

    def by_via(table: pa.Table) -> dict[str, int]:
        return {r["via"]: r["revocations"] for r in table.to_pylist()}

    assert by_via(before) == {"direct": 2, "cascade": 1, "consent_bundle": 1}
    # g4's revocation arrived before the second run (a direct grant.revoked);
    # g6 and g7 are known only from the service's state.
    assert by_via(after) == {"direct": 3, "cascade": 1, "consent_bundle": 1, "reconciled": 2}


def test_report_reconciliation_lists_each_run_per_kind(
    reconciled_archive: str, tmp_path: Path
) -> None:
    _reconcile_twice(reconciled_archive)
    table = api.report("reconciliation", reconciled_archive, analytics_dir=tmp_path / "copy")
    got = [(r["run_id"], r["kind"], r["findings"], r["still_open"]) for r in table.to_pylist()]
    assert got == [
        (2, "budget_events_missing", 1, 1),
        (2, "bundle_revocation_missing", 1, 1),
        (2, "grant_not_created", 2, 2),
        (2, "revocation_missing", 2, 2),
        (2, "webhook_event_missing", 1, 1),
        (1, "budget_events_missing", 1, 1),
        (1, "bundle_revocation_missing", 1, 1),
        (1, "dpdp_withdrawal_missing", 1, 0),
        (1, "grant_not_created", 2, 2),
        (1, "revocation_missing", 3, 2),
        (1, "webhook_event_missing", 1, 1),
    ]
    assert {r["outcome"] for r in table.to_pylist()} == {"completed"}


def test_status_shows_the_last_reconcile_and_its_open_findings(
    reconciled_archive: str, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    assert ("last_reconcile", "id", None) in api.status(reconciled_archive, copy).rows
    _reconcile_twice(reconciled_archive)
    result = invoke(
        ["status", "--db", reconciled_archive, "--analytics-dir", str(copy), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = {(r["section"], r["name"]): r["value"] for r in json.loads(result.output)}
    assert rows[("last_reconcile", "id")] == 2
    assert rows[("last_reconcile", "outcome")] == "completed"
    assert rows[("last_reconcile", "findings")] == 7
    assert {name: v for (section, name), v in rows.items() if section == "open_findings"} == {
        "budget_events_missing": 1,
        "bundle_revocation_missing": 1,
        "grant_not_created": 2,
        "revocation_missing": 2,
        "webhook_event_missing": 1,
    }


def test_a_full_dpdp_listing_is_completed_per_data_principal(reconciled_archive: str) -> None:
    newest = [
        {"recordId": f"rf{n}", "grantId": f"gf{n}", "status": "active", "withdrawnAt": None}
        for n in range(100)
    ]

    def records(query: dict[str, str]) -> Answer:
        who = query.get("dataPrincipalId")
        if who is None:
            return 200, {}, {"records": newest, "totalRecords": 100}
        owners = {"r1": "carol", "r2": "alice"}  # as the archive's dpdp.consent.created say
        listed = [r for r in scenario.RECORDS if owners.get(r["recordId"]) == who]
        return 200, {}, {"records": listed, "totalRecords": len(listed)}

    routes = scenario.service_routes()
    routes["/v1/dpdp/consent-records"] = records
    with RestServer(routes) as server:
        result = run_reconcile(_settings(reconciled_archive, server), ManualClock())
    asked = [s.query for s in server.requests if s.path == "/v1/dpdp/consent-records"]
    assert asked == [{}, {"dataPrincipalId": "alice"}, {"dataPrincipalId": "carol"}]
    assert ("dpdp_withdrawal_missing", "r1") in {(f.kind, f.subject_id) for f in result.findings}


def test_the_archive_knows_revocations_by_every_path(archive_url: str) -> None:
    frames = [
        _frame(1, "grant.created", T0, grantId="p", agentId="a"),
        _frame(2, "grant.created", T0, grantId="c1", parentGrantId="p"),
        _frame(3, "grant.created", T0, grantId="c2", parentGrantId="c1"),
        _frame(4, "grant.created", T0, grantId="c3", parentGrantId="c2"),
        # c1 revoked before the cascade from p: the cascade stops there.
        _frame(5, "grant.revoked", T1, grantId="c1", cascade=False),
        _frame(6, "grant.revoked", T2, grantId="p", cascade=True),
        _frame(7, "anomaly.auto_revoked", T1, revokedGrants=["an1", "an2"], anomalyCount=2),
        _frame(8, "dpdp.consent.created", T0, recordId="r1", grantId="w1", dataPrincipalId="x"),
        _frame(9, "dpdp.consent.withdrawn", T1, recordId="r1", grantRevoked=True),
        _frame(10, "dpdp.consent.created", T0, recordId="r2", grantId="w2", dataPrincipalId="y"),
        _frame(11, "dpdp.consent.withdrawn", T1, recordId="r2", grantRevoked=False),
        _frame(12, "dpdp.consent.created", T0, recordId="r3", grantId="e1", dataPrincipalId="z"),
        _frame(13, "dpdp.erasure.completed", T1, requestId="q", dataPrincipalId="z"),
        _frame(14, "consent_bundle.created", T0, bundleId="b1", grantId="cb1"),
        _frame(15, "consent_bundle.revoked", T1, bundleId="b1", revokeGrant=False),
    ]
    scenario.build_archive(archive_url, frames=frames)
    store = migrate.open_archive(archive_url)
    try:
        with store.engine.connect() as conn:
            known = read_knowledge(conn, "default")
    finally:
        store.close()
    t1, t2 = parse_timestamp(T1), parse_timestamp(T2)
    assert known.revoked == {
        "p": t2,
        "c1": t1,
        "an1": t1,
        "an2": t1,
        "w1": t1,
        "e1": t1,
    }
    assert known.created == {"p", "c1", "c2", "c3", "cb1"}
    assert known.records_withdrawn == {"r1", "r2"}
    assert known.bundles_revoked == {"b1"}


def test_one_reconcile_per_source_and_a_killed_run_is_abandoned(reconciled_archive: str) -> None:
    engine = create_archive_engine(reconciled_archive)
    try:
        with engine.begin() as conn:
            conn.execute(
                reconcile_runs.insert().values(
                    source="default", started_at=parse_timestamp(T0), outcome="running"
                )
            )
        with RestServer(scenario.service_routes()) as server:
            args = ["reconcile", "--db", reconciled_archive, "--base-url", server.url]
            with reconcile_lock(engine, "default"):
                held = invoke(args)
                other = invoke([*args, "--source", "other"])
            after = invoke(args)
    finally:
        engine.dispose()
    assert held.exit_code == 75
    assert held.output.startswith("Error: another reconcile is running for ")
    assert other.exit_code == 0 and after.exit_code == 0, (other.output, after.output)
    outcomes = rows(reconciled_archive, "SELECT source, outcome FROM reconcile_runs ORDER BY id")
    assert outcomes == [("default", "abandoned"), ("other", "completed"), ("default", "completed")]
