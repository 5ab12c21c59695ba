"""Each named report against the hand-built archive in analytics_fixture.py.

The expected rows are worked out by hand from the fixture's story (see its
docstring); each test runs on a SQLite file and on a PostgreSQL schema.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.analytics_fixture import build_archive
from tests.conftest import invoke

WINDOW = ["--since", "2026-03-02", "--until", "2026-03-05T00:00:00Z"]


@pytest.fixture
def archive(archive_url: str, tmp_path: Path) -> list[str]:
    """CLI arguments for the hand-built archive and a fresh analytics directory."""
    build_archive(archive_url)
    return ["--db", archive_url, "--analytics-dir", str(tmp_path / "copy")]


def report(archive: list[str], *args: str) -> list[dict[str, Any]]:
    result = invoke(["report", *args, *archive, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.output)
    return rows


DOP = "developer_or_principal"


def test_revocations_by_actor(archive: list[str]) -> None:
    # In the window: G1 developer (revokedBy), G2 developer_or_principal (a
    # live grant.revoked, no revokedBy), G3 system (anomaly), G8 principal
    # (never created in the archive, still counted) and G9: a grant.revoked
    # and an anomaly listing at the same instant count once, and on a tie in
    # time the direct revocation is first. G7 is revoked after the window.
    assert report(archive, "revocations-by-actor", *WINDOW) == [
        {"actor": DOP, "via": "direct", "revocations": 2, "share": 0.4},
        {"actor": "developer", "via": "direct", "revocations": 1, "share": 0.2},
        {"actor": "principal", "via": "direct", "revocations": 1, "share": 0.2},
        {"actor": "system", "via": "anomaly", "revocations": 1, "share": 0.2},
    ]
    # Without a window G7 (principal, 03-06) joins.
    rows = report(archive, "revocations-by-actor")
    assert {(r["actor"], r["via"]): r["revocations"] for r in rows} == {
        (DOP, "direct"): 2,
        ("principal", "direct"): 2,
        ("developer", "direct"): 1,
        ("system", "anomaly"): 1,
    }
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    # --by via: one row per path, without the actor.
    assert report(archive, "revocations-by-actor", *WINDOW, "--by", "via") == [
        {"via": "direct", "revocations": 4, "share": 0.8},
        {"via": "anomaly", "revocations": 1, "share": 0.2},
    ]


def test_revocations_by_actor_filters_and_groups(archive: list[str]) -> None:
    assert report(archive, "revocations-by-actor", "--source", "acct-b") == [
        {"actor": "principal", "via": "direct", "revocations": 1, "share": 1.0},
    ]
    assert report(archive, "revocations-by-actor", *WINDOW, "--agent", "A1") == [
        {"actor": "developer", "via": "direct", "revocations": 1, "share": 0.5},
        {"actor": DOP, "via": "direct", "revocations": 1, "share": 0.5},
    ]
    assert report(archive, "revocations-by-actor", *WINDOW, "--by", "day") == [
        {"period": "2026-03-02", "actor": "developer", "via": "direct", "revocations": 1,
         "share": 1.0},
        {"period": "2026-03-03", "actor": DOP, "via": "direct", "revocations": 2, "share": 2 / 3},
        {"period": "2026-03-03", "actor": "system", "via": "anomaly", "revocations": 1,
         "share": 1 / 3},
        {"period": "2026-03-04", "actor": "principal", "via": "direct", "revocations": 1,
         "share": 1.0},
    ]  # fmt: skip
    by_agent = report(archive, "revocations-by-actor", *WINDOW, "--by", "agent")
    assert by_agent == [
        # G8's agent is unknown to the archive: its revocation is kept, agent null.
        {"agent_id": None, "actor": "principal", "via": "direct", "revocations": 1, "share": 1.0},
        {"agent_id": "A1", "actor": "developer", "via": "direct", "revocations": 1, "share": 0.5},
        {"agent_id": "A1", "actor": DOP, "via": "direct", "revocations": 1, "share": 0.5},
        {"agent_id": "A2", "actor": "system", "via": "anomaly", "revocations": 1, "share": 1.0},
        {"agent_id": "A3", "actor": DOP, "via": "direct", "revocations": 1, "share": 1.0},
    ]


def test_budget_exhaustion_rate(archive: list[str]) -> None:
    # Budget activity in the window: G4 (50 via pct, 80 via percentage,
    # exhausted after 3 h), G5 (exhausted after 48 h with no threshold event),
    # G6 (50 twice: one grant). G7's only budget event is before the window.
    assert report(archive, "budget-exhaustion-rate", *WINDOW) == [
        {
            "grants": 3,
            "reached_50": 3,
            "reached_80": 2,
            "exhausted": 2,
            "exhaustion_rate": 2 / 3,
            "median_seconds_to_exhaustion": (3 * 3600 + 48 * 3600) / 2,
        }
    ]
    assert report(archive, "budget-exhaustion-rate", *WINDOW, "--by", "agent") == [
        {
            "agent_id": "A1",
            "grants": 2,
            "reached_50": 2,
            "reached_80": 1,
            "exhausted": 1,
            "exhaustion_rate": 0.5,
            "median_seconds_to_exhaustion": 48 * 3600.0,
        },
        {
            "agent_id": "A2",
            "grants": 1,
            "reached_50": 1,
            "reached_80": 1,
            "exhausted": 1,
            "exhaustion_rate": 1.0,
            "median_seconds_to_exhaustion": 3 * 3600.0,
        },
    ]
    # All time: G7 joins (80 reached, not exhausted).
    (everything,) = report(archive, "budget-exhaustion-rate")
    assert (everything["grants"], everything["reached_80"], everything["exhausted"]) == (4, 3, 2)
    assert everything["exhaustion_rate"] == 0.5
    # Crossings after --until do not count: up to 03-03 02:30 only G4's 50/80
    # and G6's 50 have happened.
    (early,) = report(
        archive, "budget-exhaustion-rate", "--since", "2026-03-02", "--until", "2026-03-03T02:30Z"
    )
    assert (early["grants"], early["reached_50"], early["reached_80"], early["exhausted"]) == (
        2,
        2,
        1,
        0,
    )
    assert early["median_seconds_to_exhaustion"] is None
    # G4's budget events (01:00, 02:00, 03:00 on 03-03) straddle this window
    # and one lies inside it; G6's (01:00, 02:00 on 03-02) straddle the next
    # and none lies inside.
    (inside,) = report(
        archive,
        "budget-exhaustion-rate",
        "--since",
        "2026-03-03T01:30Z",
        "--until",
        "2026-03-03T02:30Z",
    )
    assert [inside[k] for k in ("grants", "reached_50", "reached_80", "exhausted")] == [1, 1, 1, 0]
    assert (
        report(
            archive,
            "budget-exhaustion-rate",
            "--since",
            "2026-03-02T01:10Z",
            "--until",
            "2026-03-02T01:50Z",
        )
        == []
    )
    (source_b,) = report(archive, "budget-exhaustion-rate", "--source", "acct-b")
    assert [source_b[k] for k in ("grants", "reached_50", "reached_80", "exhausted")] == [
        1,
        1,
        1,
        1,
    ]
    assert (
        report(archive, "budget-exhaustion-rate", *WINDOW, "--source", "acct-a")[0]["grants"] == 2
    )


def test_event_volume(archive: list[str]) -> None:
    rows = report(archive, "event-volume", *WINDOW)
    got = {(r["period"], r["type"]): r["events"] for r in rows}
    assert got == {
        ("2026-03-02", "grant.created"): 4,  # G1 once despite the duplicate, G2, G5, G6
        ("2026-03-02", "token.issued"): 3,
        ("2026-03-02", "budget.threshold"): 2,
        ("2026-03-02", "grant.revoked"): 1,
        ("2026-03-02", "sso.login"): 1,
        ("2026-03-03", "grant.revoked"): 2,
        ("2026-03-03", "anomaly.auto_revoked"): 2,
        ("2026-03-03", "grant.created"): 2,
        ("2026-03-03", "budget.threshold"): 2,
        ("2026-03-03", "token.issued"): 1,
        ("2026-03-03", "budget.exhausted"): 1,
        ("2026-03-03", "passport.renewed"): 1,  # unknown types are counted too
        ("2026-03-04", "budget.exhausted"): 1,
        ("2026-03-04", "grant.revoked"): 1,
    }
    assert [r["period"] for r in rows] == sorted(r["period"] for r in rows)
    month = report(archive, "event-volume", "--by", "month")
    assert {r["period"] for r in month} == {"2026-03-01"}
    assert sum(r["events"] for r in month) == 29
    week = report(archive, "event-volume", "--by", "week")
    # 2026-03-01 is a Sunday: it belongs to the week of Monday 02-23.
    assert {r["period"]: 0 for r in week}.keys() == {"2026-02-23", "2026-03-02"}
    assert sum(r["events"] for r in week if r["period"] == "2026-02-23") == 3
    source_b = report(archive, "event-volume", *WINDOW, "--source", "acct-b")
    assert sum(r["events"] for r in source_b) == 7
    agent = report(archive, "event-volume", "--agent", "A3")
    assert {r["type"]: r["events"] for r in agent} == {
        "grant.created": 1,
        "grant.revoked": 1,  # carries no agentId; G9 belongs to A3
        "anomaly.auto_revoked": 1,
        "passport.renewed": 1,
    }


def test_token_issuance(archive: list[str]) -> None:
    # A1: G1's documented tokens (exchange, refresh; agent from the grant) and
    # G2's live token (no method, and ids that are not ULIDs: unknown). A2:
    # G4's live token (the same).
    assert report(archive, "token-issuance", *WINDOW) == [
        {
            "agent_id": "A1",
            "tokens": 3,
            "exchange": 1,
            "delegation": 0,
            "refresh": 1,
            "unknown": 1,
            "refresh_ratio": 0.5,
        },
        {
            "agent_id": "A2",
            "tokens": 1,
            "exchange": 0,
            "delegation": 0,
            "refresh": 0,
            "unknown": 1,
            "refresh_ratio": None,
        },
    ]
    assert [r["agent_id"] for r in report(archive, "token-issuance", "--agent", "A2")] == ["A2"]
    # A window through G1's tokens: only its refresh at 11:00 (its agent comes
    # from the grant) and nothing of G2 (09:00).
    assert report(
        archive, "token-issuance", "--since", "2026-03-02T10:30Z", "--until", "2026-03-03"
    ) == [
        {
            "agent_id": "A1",
            "tokens": 1,
            "exchange": 0,
            "delegation": 0,
            "refresh": 1,
            "unknown": 0,
            "refresh_ratio": 1.0,
        }
    ]
    by_source = report(archive, "token-issuance", "--source", "acct-a")
    assert [(r["agent_id"], r["tokens"], r["exchange"]) for r in by_source] == [("A1", 3, 1)]
    assert report(archive, "token-issuance", "--since", "2026-03-05") == []


def test_grant_lifetime(archive: list[str]) -> None:
    # Lifetimes in the window: G9 1 h and G2 24 h (developer_or_principal,
    # direct), G1 2 h (developer), G3 48 h (system, anomaly); G8 has no
    # grant.created.
    h = 3600.0
    assert report(archive, "grant-lifetime", *WINDOW) == [
        {
            "actor": "all",
            "via": "all",
            "grants": 4,
            "median_seconds": (2 * h + 24 * h) / 2,
            "p90_seconds": 24 * h + 0.7 * (48 * h - 24 * h),
            "without_created": 1,
        },
        {
            "actor": DOP,
            "via": "direct",
            "grants": 2,
            "median_seconds": (1 * h + 24 * h) / 2,
            "p90_seconds": 1 * h + 0.9 * (24 * h - 1 * h),
            "without_created": 0,
        },
        {
            "actor": "developer",
            "via": "direct",
            "grants": 1,
            "median_seconds": 2 * h,
            "p90_seconds": 2 * h,
            "without_created": 0,
        },
        {
            "actor": "system",
            "via": "anomaly",
            "grants": 1,
            "median_seconds": 48 * h,
            "p90_seconds": 48 * h,
            "without_created": 0,
        },
        {
            "actor": "principal",
            "via": "direct",
            "grants": 0,
            "median_seconds": None,
            "p90_seconds": None,
            "without_created": 1,
        },
    ]


def test_top_agents(archive: list[str]) -> None:
    # Created in the window: A1 G1 G2 G5 G6, A2 G4, A3 G9.
    assert report(archive, "top-agents", *WINDOW) == [
        {
            "rank": 1,
            "agent_id": "A1",
            "grants": 4,
            "revoked": 2,
            "revocation_rate": 0.5,
            "exhausted": 1,
            "exhaustion_rate": 0.25,
            "tokens": 3,
        },
        {
            "rank": 2,
            "agent_id": "A3",
            "grants": 1,
            "revoked": 1,
            "revocation_rate": 1.0,
            "exhausted": 0,
            "exhaustion_rate": 0.0,
            "tokens": 0,
        },
        {
            "rank": 2,
            "agent_id": "A2",
            "grants": 1,
            "revoked": 0,
            "revocation_rate": 0.0,
            "exhausted": 1,
            "exhaustion_rate": 1.0,
            "tokens": 1,
        },
    ]
    # With no window, every grant: A2 gains G3 and G7, and G8 (agent unknown) shows up.
    everything = {r["agent_id"]: r["grants"] for r in report(archive, "top-agents")}
    assert everything == {"A1": 4, "A2": 3, "A3": 1, None: 1}


def test_views_hold_every_archived_event_once(archive: list[str]) -> None:
    result = invoke(
        [
            "sql",
            "SELECT count(*) AS n, count(DISTINCT id) AS ids, "
            "(SELECT count(*) FROM rejected_events) AS rejected, "
            "(SELECT count(*) FROM grants) AS grants FROM events",
            *archive,
            "--format",
            "json",
        ]
    )
    assert result.exit_code == 0, result.output
    # 22 distinct events from acct-a (one sent twice), 7 from acct-b; G1-G9.
    assert json.loads(result.output) == [{"n": 29, "ids": 29, "rejected": 2, "grants": 9}]


# --------------------------------------------------------------------------- the shared filter


def test_reports_and_exports_filter_with_the_same_sql() -> None:
    from datetime import datetime, timezone

    from queries.export import Filters
    from queries.filter_sql import owned_by, window
    from queries.reports import load_reports

    reports = load_reports()
    folder = Path(__file__).parent.parent / "queries" / "reports"
    for report in reports.values():
        text = (folder / f"{report.name}.sql").read_text(encoding="utf-8")
        # Each windowed report names the window rather than spelling it out.
        if "since" in report.options:
            assert "{window(" in text or "{overlaps(" in text, report.name
        assert "{" not in report.sql, report.name  # every placeholder expanded
    when = datetime(2026, 3, 2, tzinfo=timezone.utc)
    where, params = Filters(since=when, agent_id="A1").where()
    assert window("occurred_at") in where and window("occurred_at") in reports["event-volume"].sql
    agent = owned_by("agent_id", "$agent")
    assert agent in where and agent in reports["event-volume"].sql
    assert params == {"since": when, "until": None, "agent": "A1"}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT 1 WHERE {nowhere}", "unknown placeholder {nowhere}"),
        ("SELECT 1 WHERE {window()}", "wrong arguments for {window()}"),
        ("SELECT 1 WHERE {overlaps(a)}", "wrong arguments for {overlaps(a)}"),
    ],
)
def test_a_report_with_a_bad_placeholder_is_refused(sql: str, message: str) -> None:
    from queries.reports import ReportError, parse_report

    text = f"-- name: x\n-- summary: s\n-- options: since\n{sql}\n"
    with pytest.raises(ReportError) as refused:
        parse_report(text, "x.sql")
    assert str(refused.value) == f"x.sql: {message}"


def test_placeholders_expand_to_the_window_they_name() -> None:
    from queries.filter_sql import expand

    assert (
        expand("{window(t)}")
        == "(($since IS NULL OR t >= $since) AND ($until IS NULL OR t < $until))"
    )
    assert expand("{window(a, b)}") == (
        "(($since IS NULL OR a >= $since) AND ($until IS NULL OR b < $until))"
    )
    assert expand("{overlaps(s, coalesce(e, now()))}") == (
        "(($since IS NULL OR coalesce(e, now()) >= $since) AND ($until IS NULL OR s < $until))"
    )
