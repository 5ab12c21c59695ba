"""The simulator's read endpoints over real HTTP on 127.0.0.1: the live paths, fields,
paging and rate limit, and state that agrees with the generator's ground truth."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from ingest.simulator import Simulator
from ingest.simulator.rest import RateWindow
from tests.test_simulator import AUTH, make, parse_stamp
from tests.test_simulator_live import ManualClock

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with make(backlog=6000, seed=3, rest_rate_limit=10_000) as simulator:
        yield simulator


def get(sim: Simulator, path: str, **params: Any) -> Any:
    response = httpx.get(sim.base_url + path, headers=AUTH, params=params, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_grants_show_every_revocation_of_the_ground_truth(sim: Simulator) -> None:
    grants = get(sim, "/v1/grants")["grants"]
    truth = sim.backlog_truth()
    revoked = {g["grantId"] for g in grants if g["status"] == "revoked"}
    assert revoked == set(truth.revocations)
    assert all("revokedAt" in g for g in grants if g["status"] == "revoked")
    assert all("revokedAt" not in g for g in grants if g["status"] == "active")
    issued = [g["issuedAt"] for g in grants]
    assert issued == sorted(issued, reverse=True)
    first = grants[0]
    keys = {"grantId", "agentId", "principalId", "developerId", "scopes", "status"}
    assert keys | {"issuedAt", "expiresAt", "delegationDepth"} <= set(first)
    one = get(sim, f"/v1/grants/{first['grantId']}")
    assert one == first
    by_agent = get(sim, "/v1/grants", agentId=first["agentId"], status="revoked")["grants"]
    assert all(g["agentId"] == first["agentId"] and g["status"] == "revoked" for g in by_agent)
    missing = httpx.get(sim.base_url + "/v1/grants/grnt_nope", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["code"] == "NOT_FOUND"


def test_the_compliance_export_carries_depth_and_filters_on_issue_time(sim: Simulator) -> None:
    export = get(sim, "/v1/compliance/export/grants")
    assert export["total"] == len(export["grants"]) == len(get(sim, "/v1/grants")["grants"])
    assert any(g["delegationDepth"] > 0 for g in export["grants"])
    assert all("revokedAt" in g for g in export["grants"])
    middle = sorted(g["issuedAt"] for g in export["grants"])[len(export["grants"]) // 2]
    later = get(sim, "/v1/compliance/export/grants", since=middle, status="revoked")
    assert later["grants"] and all(
        g["issuedAt"] >= middle and g["status"] == "revoked" for g in later["grants"]
    )


def test_the_export_is_newest_first_and_compares_instants(sim: Simulator) -> None:
    grants = get(sim, "/v1/compliance/export/grants")["grants"]
    issued = [g["issuedAt"] for g in grants]
    assert issued == sorted(issued, reverse=True)
    middle = issued[len(issued) // 2]
    # The same instant written with an offset: compared as text it sorts before "Z".
    instant = middle.replace("Z", "+00:00")
    same = get(sim, "/v1/compliance/export/grants", since=instant, until=instant)["grants"]
    assert same and {g["issuedAt"] for g in same} == {middle}
    bad = httpx.get(
        sim.base_url + "/v1/compliance/export/grants", headers=AUTH, params={"since": "soon"}
    )
    assert bad.status_code == 500 and bad.json()["code"] == "INTERNAL_ERROR"


def test_consent_bundle_grants_have_the_bundles_scopes_and_expiry(sim: Simulator) -> None:
    bundles = get(sim, "/v1/consent-bundles", limit=100)["bundles"]
    grants = {g["grantId"]: g for g in get(sim, "/v1/compliance/export/grants")["grants"]}
    accepted: Counter[str] = Counter()
    synced: dict[str, str] = {}
    for event in sim.events():
        if event["type"] == "consent_bundle.synced":
            accepted[event["data"]["bundleId"]] += event["data"]["accepted"]
            synced[event["data"]["bundleId"]] = event["createdAt"]
    assert bundles and any(b["id"] in synced for b in bundles)
    for bundle in bundles:
        grant = grants[bundle["grantId"]]
        assert bundle["scopes"] and grant["scopes"] == bundle["scopes"]
        assert grant["expiresAt"] == bundle["offlineExpiresAt"]
        lifetime = parse_stamp(bundle["offlineExpiresAt"]) - parse_stamp(bundle["createdAt"])
        assert timedelta(hours=24) - timedelta(seconds=1) < lifetime <= timedelta(hours=24)
        assert bundle["offlineTTL"] == "24h" and bundle["checkpointAt"] <= bundle["createdAt"]
        assert bundle["auditEntryCount"] == accepted[bundle["id"]]
        assert bundle["lastSyncAt"] == synced.get(bundle["id"])


def test_consent_bundles_page_by_cursor(sim: Simulator) -> None:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 7}
    for _ in range(1000):
        page = get(sim, "/v1/consent-bundles", **params)
        seen += [b["id"] for b in page["bundles"]]
        if "nextCursor" not in page:
            break
        params["cursor"] = page["nextCursor"]
    bundles = {e["data"]["bundleId"] for e in sim.events() if e["type"] == "consent_bundle.created"}
    assert len(seen) == len(set(seen)) and set(seen) == bundles and len(bundles) > 7
    offset = params["cursor"].replace("Z", "+00:00")  # the same instant
    assert get(sim, "/v1/consent-bundles", limit=7, cursor=offset) == page
    bad = httpx.get(sim.base_url + "/v1/consent-bundles", headers=AUTH, params={"cursor": "x"})
    assert bad.status_code == 400 and bad.json()["code"] == "BAD_REQUEST"
    revoked = get(sim, "/v1/consent-bundles", status="revoked", limit=500)["bundles"]
    assert revoked and all(b["revokedAt"] and b["status"] == "revoked" for b in revoked)
    assert len(get(sim, "/v1/consent-bundles", limit=500)["bundles"]) <= 100


def test_dpdp_records_are_the_newest_hundred_unless_a_principal_is_named(sim: Simulator) -> None:
    body = get(sim, "/v1/dpdp/consent-records")
    records = body["records"]
    assert body["totalRecords"] == len(records) <= 100
    created = [r["createdAt"] for r in records]
    assert created == sorted(created, reverse=True)
    principal = records[0]["dataPrincipalId"]
    mine = get(sim, "/v1/dpdp/consent-records", dataPrincipalId=principal)["records"]
    assert mine and all(r["dataPrincipalId"] == principal for r in mine)
    assert {r["status"] for r in records} <= {"active", "withdrawn", "erased"}


def test_budget_allocations_follow_the_debits(sim: Simulator) -> None:
    allocations = {a["grantId"]: a for a in get(sim, "/v1/budget/allocations")["allocations"]}
    last: dict[str, str] = {}
    for event in sim.events():
        if event["type"] in ("budget.threshold", "budget.exhausted"):
            last[event["data"]["grantId"]] = event["data"]["remaining"]
    assert set(last) <= set(allocations)
    assert len(allocations) > len(last)  # some budgets were never debited past 50%
    for grant_id, remaining in last.items():
        assert float(allocations[grant_id]["remainingBudget"]) == float(remaining)
        assert allocations[grant_id]["remainingBudget"].endswith("00")
    assert all(float(a["initialBudget"]) > 0 for a in allocations.values())


def test_requests_past_the_plan_limit_get_429_with_retry_after() -> None:
    with make(rest_rate_limit=3, time_scale=0.02) as sim:
        answers = [httpx.get(sim.base_url + "/v1/grants", headers=AUTH) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[3].json()["code"] == "RATE_LIMIT_EXCEEDED"
        assert 0 < float(answers[3].headers["Retry-After"]) <= 1.2
        assert answers[2].headers["X-RateLimit-Remaining"] == "0"
        time.sleep(float(answers[3].headers["Retry-After"]))
        assert httpx.get(sim.base_url + "/v1/grants", headers=AUTH).status_code == 200
        assert httpx.get(sim.base_url + "/v1/grants").status_code == 401


def test_rate_window_on_a_manual_clock() -> None:
    clock = ManualClock()
    window = RateWindow(2, 60.0, clock)
    assert window.check() == (True, 1, 60.0)
    clock.now += 10
    assert window.check() == (True, 0, 50.0)
    assert window.check() == (False, 0, 50.0)
    clock.now += 50
    assert window.check() == (True, 1, 60.0)


def test_delivery_pages_are_bounded_as_the_service_bounds_them() -> None:
    with make(webhook_url="http://127.0.0.1:9/hook", webhook_secret="0" * 48) as sim:
        assert sim.webhook is not None
        path = f"{sim.base_url}/v1/webhooks/{sim.webhook.webhook_id}/deliveries"
        last = httpx.get(path, headers=AUTH, params={"page": 1_000_000})
        past = httpx.get(path, headers=AUTH, params={"page": 1_000_001})
    assert last.status_code == 200 and last.json()["deliveries"] == []
    assert past.status_code == 400 and past.json()["code"] == "BAD_REQUEST"
