"""budget-exhaustion-rate against the live service's budget rules (producer notes, "Budgets").

After each successful debit the service sends one event chosen by the level
reached: budget.exhausted at nothing left, else threshold pct 80 from 80%
used, else pct 50 from 50%. Thresholds repeat, a debit can jump straight to
exhausted, exhausted comes once per grant, and nothing marks the allocation.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest import migrate
from tests.live_streams import CAPTURE, ingest_body, report, sse

T0 = 1_790_000_000_000  # 2026-09-21T14:13:20Z


@pytest.fixture
def archive_url(archive_url: str) -> str:
    if archive_url.startswith("postgresql"):
        migrate.upgrade(archive_url)
    return archive_url


def threshold(grant: str, pct: int, remaining: str) -> dict[str, object]:
    return {"grantId": grant, "pct": pct, "remaining": remaining}


def test_levels_repeat_and_jumps_count_per_grant(archive_url: str, tmp_path: Path) -> None:
    """Three grants, counted once each whatever the number of their events.

    - G1 (agent A): pct 50 three times (three debits between 50% and 80%),
      then pct 80 twice: reached 50 and 80, not exhausted.
    - G2 (agent A): one debit from 40% to 100%: budget.exhausted alone, 2.5 s
      after its grant.created: reached 50, 80 and exhausted.
    - G3 (agent B): pct 50, then exhausted; its grant.created was never seen:
      it counts (agent from its token), and is left out of the median.
    So grants 3, reached_50 3, reached_80 3, exhausted 2, rate 2/3, median
    2.5 s (G2 alone). By agent: A 2 grants, 1 exhausted; B 1 grant, 1
    exhausted, no median. In a window holding only G1's first debits: G1
    counts, with everything archived before the window's end (reached 50
    only).
    """
    stream = sse(
        [
            ("grant.created", T0, {"grantId": "G1", "agentId": "A", "principalId": "p"}),
            ("grant.created", T0, {"grantId": "G2", "agentId": "A", "principalId": "p"}),
            ("budget.threshold", T0 + 1_000, threshold("G1", 50, "45.0000")),
            ("budget.threshold", T0 + 2_000, threshold("G1", 50, "35.0000")),
            ("budget.exhausted", T0 + 2_500, {"grantId": "G2", "remaining": "0"}),
            ("budget.threshold", T0 + 3_000, threshold("G1", 50, "25.0000")),
            ("budget.threshold", T0 + 60_000, threshold("G1", 80, "15.0000")),
            ("budget.threshold", T0 + 61_000, threshold("G1", 80, "5.0000")),
            ("token.issued", T0 + 70_000, {"tokenId": "T9", "grantId": "G3", "agentId": "B"}),
            ("budget.threshold", T0 + 71_000, threshold("G3", 50, "2.0000")),
            ("budget.exhausted", T0 + 72_000, {"grantId": "G3", "remaining": "0"}),
        ]
    )
    ingest_body(archive_url, stream)
    assert report(archive_url, tmp_path, "budget-exhaustion-rate") == [
        {"grants": 3, "reached_50": 3, "reached_80": 3, "exhausted": 2,
         "exhaustion_rate": pytest.approx(2 / 3), "median_seconds_to_exhaustion": 2.5},
    ]  # fmt: skip
    by_agent = report(archive_url, tmp_path, "budget-exhaustion-rate", "--by", "agent")
    assert [(r["agent_id"], r["grants"], r["exhausted"], r["median_seconds_to_exhaustion"])
            for r in by_agent] == [("A", 2, 1, 2.5), ("B", 1, 1, None)]  # fmt: skip
    early = report(
        archive_url, tmp_path, "budget-exhaustion-rate",
        "--since", "2026-09-21T14:13:21Z", "--until", "2026-09-21T14:13:22Z",
    )  # fmt: skip
    assert early == [
        {"grants": 1, "reached_50": 1, "reached_80": 0, "exhausted": 0,
         "exhaustion_rate": 0.0, "median_seconds_to_exhaustion": None},
    ]  # fmt: skip


def test_the_full_capture(archive_url: str, tmp_path: Path) -> None:
    """The live capture's 17 budget events on 8 grants.

    Per grant (created → events, from the capture):
    - AGT3 (agent …Q1JW, created 23:09:20.303): pct 50, pct 80, exhausted at
      21.026 → 0.723 s.
    - AM90 (…Q1JW, 20.419): pct 50 three times, exhausted at 21.108 → 0.689 s.
    - ATK5 (…CDGK, 20.618): exhausted alone at 21.138 → 0.520 s (reached 50
      and 80 by the jump).
    - PZZW (…BXWR): pct 50 only.
    - YTTQ (…BXWR, 23:10:13.857): pct 80, exhausted at 13.887 → 0.030 s.
    - YWDP (…CDGK): pct 50 only.
    - HSCM (…CDGK, 23:11:18.084): pct 50, exhausted at 18.189 → 0.105 s.
    - D1NA (…Q1JW, 23:11:23.046): pct 50, 80, exhausted at 23.112 → 0.066 s.
    So 8 grants, all reached 50, 6 reached 80 (every exhausted grant), 6
    exhausted, rate 0.75, median of the six times (0.105 + 0.520) / 2 =
    0.3125 s. By agent: …Q1JW 3/3/3/3 median 0.689; …CDGK 3/3/2/2 median
    (0.105 + 0.520) / 2; …BXWR 2/2/1/1 median 0.030.
    """
    ingest_body(archive_url, CAPTURE.read_bytes())
    assert report(archive_url, tmp_path, "budget-exhaustion-rate") == [
        {"grants": 8, "reached_50": 8, "reached_80": 6, "exhausted": 6,
         "exhaustion_rate": 0.75, "median_seconds_to_exhaustion": pytest.approx(0.3125)},
    ]  # fmt: skip
    by_agent = report(archive_url, tmp_path, "budget-exhaustion-rate", "--by", "agent")
    found = [
        (r["agent_id"][-4:], r["grants"], r["reached_50"], r["reached_80"], r["exhausted"],
         round(r["median_seconds_to_exhaustion"], 6))
        for r in by_agent
    ]  # fmt: skip
    assert found == [
        ("Q1JW", 3, 3, 3, 3, 0.689),
        ("CDGK", 3, 3, 2, 2, 0.3125),
        ("BXWR", 2, 2, 1, 1, 0.03),
    ]
