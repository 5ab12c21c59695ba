"""token.issued kinds (exchange, delegation, refresh) from the ULIDs of token and grant ids.

The rule is in ``queries.token_kinds``; the analytics copy stores each
token's lag (``token_lag_ms``) and the ``tokens`` view applies the rule, so
these tests check the Python reference, that the SQL agrees with it, and the
``token-issuance`` report end to end through the real CLI on both databases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest import migrate
from queries.token_kinds import (
    CROCKFORD,
    INITIAL_WINDOW_MS,
    kind_sql,
    lag_sql,
    token_kind,
    token_lag_ms,
    ulid_ms,
)
from tests.conftest import invoke
from tests.live_streams import CAPTURE, ingest_body, report, sse


def ulid(ms: int, tail: str = "0" * 16) -> str:
    """A ULID whose time is ``ms``."""
    head = ""
    for _ in range(10):
        head = CROCKFORD[ms % 32] + head
        ms //= 32
    return head + tail


# -- the rule in Python


def test_ulid_time_is_the_first_ten_symbols() -> None:
    # The ULID specification's example: ulid(1469918176385) is 01ARYZ6S41....
    assert ulid_ms("tok_01ARYZ6S41TSV4RRFFQ69G5FAV") == 1_469_918_176_385
    assert ulid_ms("grnt_01aryz6s41tsv4rrffq69g5fav") == 1_469_918_176_385
    assert ulid_ms("x_" + ulid(0)) == 0
    assert ulid_ms("x_" + ulid(2**48 - 1)) == 2**48 - 1
    # The live capture: a grant and its first token in the same millisecond.
    assert ulid_ms("grnt_01M8SXXAGT3EE58VDG41DF7QVH") == ulid_ms("tok_01M8SXXAGTXJGQ9APQC897MMH3")


@pytest.mark.parametrize(
    "identifier",
    [
        None,
        "",
        "T1",
        "tok_",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV",  # no prefix: not how the service names ids
        "tok_01ARZ3NDEKTSV4RRFFQ69G5FA",  # 25 symbols
        "tok_01ARZ3NDEKTSV4RRFFQ69G5FAVV",  # 27 symbols
        "tok_81ARZ3NDEKTSV4RRFFQ69G5FAV",  # above 48 bits of time
        "tok_01ARZ3NDEKTSV4RRFFQ69G5FAU",  # U is not Crockford
        "tok_01ARZ3NDEKTSV4RRFFQ69G5FAI",  # nor I, L, O
    ],
)
def test_what_is_not_a_ulid(identifier: str | None) -> None:
    assert ulid_ms(identifier) is None


def test_the_window() -> None:
    w = INITIAL_WINDOW_MS
    assert token_kind(None, 0, has_parent=False) == "exchange"
    assert token_kind(None, w, has_parent=False) == "exchange"
    assert token_kind(None, -w, has_parent=False) == "exchange"
    assert token_kind(None, 1, has_parent=True) == "delegation"
    assert token_kind(None, w + 1, has_parent=False) == "refresh"
    assert token_kind(None, w + 1, has_parent=True) == "refresh"
    assert token_kind(None, 86_400_000, has_parent=False) == "refresh"
    # A token made before its grant was not issued for it: no kind.
    assert token_kind(None, -w - 1, has_parent=False) == "unknown"
    assert token_kind(None, None, has_parent=True) == "unknown"
    # A documented method wins over the ids.
    assert token_kind("refresh", 0, has_parent=False) == "refresh"
    assert token_kind("exchange", 90_000, has_parent=True) == "exchange"
    assert token_kind("something-else", 0, has_parent=False) == "exchange"
    assert token_lag_ms("tok_" + ulid(1_000_493), "grnt_" + ulid(1_000_000)) == 493
    assert token_lag_ms("T1", "grnt_" + ulid(5)) is None


# -- the SQL agrees with the reference


_ids = st.one_of(
    st.builds(
        lambda ms, p: f"{p}_{ulid(ms)}", st.integers(0, 2**48 - 1), st.sampled_from(["tok", "grnt"])
    ),
    st.text(alphabet="0123456789ABCDEFGHJKMNPQRSTVWXYZabc_IU", max_size=32),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    token=_ids,
    grant=_ids,
    near=st.integers(-8, 8),
    method=st.sampled_from([None, "exchange", "refresh", "delegation", "other"]),
    has_parent=st.booleans(),
)
def test_sql_gives_the_reference_answers(
    token: str | None, grant: str | None, near: int, method: str | None, has_parent: bool
) -> None:
    conn = duckdb.connect()
    # Half the cases: a token close to its grant, around the window's edges.
    if near % 2 and grant is not None and ulid_ms(grant) is not None:
        token = "tok_" + ulid(max(ulid_ms(grant) + near, 0))  # type: ignore[operator]
    sql = (
        f"SELECT lag, {kind_sql('m', 'lag', 'p')} FROM "
        f"(SELECT {lag_sql('t', 'g')} AS lag, m, p FROM (SELECT ? AS t, ? AS g, ? AS m, ? AS p))"
    )
    lag, kind = conn.execute(sql, [token, grant, method, has_parent]).fetchone()  # type: ignore[misc]
    assert lag == token_lag_ms(token, grant)
    assert kind == token_kind(method, lag, has_parent)


# -- the report, end to end


@pytest.fixture
def archive_url(archive_url: str) -> str:
    if archive_url.startswith("postgresql"):
        migrate.upgrade(archive_url)
    return archive_url


def ingest_and_report(url: str, tmp_path: Path, body: bytes, *args: str) -> list[dict[str, Any]]:
    ingest_body(url, body)
    return report(url, tmp_path, "token-issuance", *args)


def test_kinds_in_any_order_and_after_a_gap(archive_url: str, tmp_path: Path) -> None:
    """Hand-built live events, out of order, with a refresh whose first token was never seen.

    Agent A: grant G1 at t0 with its token at t0 (exchange) — the token arrives
    before its grant.created —, a refresh of G1 40 s later; grant G3 whose
    grant.created and first token the archive never saw, refreshed at t0+90 s
    (refresh: the ids say so, not the order). Agent B: G2, delegated from G1,
    token in G2's millisecond (delegation), its grant.created arriving after
    the token; and a token with ids that are not ULIDs and no method (unknown).
    So A: 3 tokens, 1 exchange, 2 refresh, ratio 2/3; B: 2 tokens,
    1 delegation, 1 unknown, ratio 0/1.
    """
    t0 = 1_790_000_000_000
    g1, g2, g3 = "grnt_" + ulid(t0), "grnt_" + ulid(t0 + 500), "grnt_" + ulid(t0 - 10_000)
    live: list[tuple[str, int, dict[str, Any]]] = [
        ("token.issued", t0, {"tokenId": "tok_" + ulid(t0, "1" * 16), "grantId": g1, "agentId": "A"}),
        ("grant.created", t0, {"grantId": g1, "agentId": "A", "principalId": "p"}),
        ("token.issued", t0 + 502, {"tokenId": "tok_" + ulid(t0 + 501), "grantId": g2, "agentId": "B"}),
        ("grant.created", t0 + 500,
         {"grantId": g2, "agentId": "B", "principalId": "p", "parentGrantId": g1, "delegationDepth": 1}),
        ("token.issued", t0 + 40_000, {"tokenId": "tok_" + ulid(t0 + 40_000), "grantId": g1, "agentId": "A"}),
        ("token.issued", t0 + 90_000, {"tokenId": "tok_" + ulid(t0 + 90_000), "grantId": g3, "agentId": "A"}),
        ("token.issued", t0 + 91_000, {"tokenId": "tok_x", "grantId": "grant-7", "agentId": "B"}),
    ]  # fmt: skip
    rows = ingest_and_report(archive_url, tmp_path, sse(live))
    assert rows == [
        {"agent_id": "A", "tokens": 3, "exchange": 1, "delegation": 0, "refresh": 2,
         "unknown": 0, "refresh_ratio": pytest.approx(2 / 3)},
        {"agent_id": "B", "tokens": 2, "exchange": 0, "delegation": 1, "refresh": 0,
         "unknown": 1, "refresh_ratio": 0.0},
    ]  # fmt: skip


def test_the_full_capture(archive_url: str, tmp_path: Path) -> None:
    """The live capture's 29 token.issued events: 20 exchanges, 3 delegations, 6 refreshes.

    Derivation (ms = token ULID time - grant ULID time, from the listing of
    the capture's token.issued events):
    - 23 tokens have ms = 0, one per grant.created in the capture: initial.
      Three of their grants have a parentGrantId (B4V1 from APHW, B5VE from
      B4V1, YYSR from YS0R): delegations; the other 20 are exchanges.
    - 6 tokens are later than their grant: AGT3 +493, +559, +40330, +122713;
      APHW +415; EGPV +160 ms: refreshes.
    Per agent:
    - ag_…AB19: grants AGT3, AM90, PXV7, YS0R, EGPV, D1NA (6 exchanges) and
      the 5 refreshes of AGT3 and EGPV: 11 tokens, ratio 5/11.
    - ag_…ABQX: APHW, AS4H, PZZW, YYTT, GB5A (5 exchanges) and APHW's refresh:
      6 tokens, ratio 1/6.
    - ag_…AC1H: ATK5, AWRF, YHWP, YYWD, XHSC (5 exchanges) and B5VE
      (delegation): 6 tokens.
    - ag_…ACTH: B4V1 and YYSR (delegations), XJTY (exchange): 3 tokens.
    - ag_…ADYG: AY00, AZGK, YY0 (exchanges): 3 tokens.
    """
    rows = ingest_and_report(archive_url, tmp_path, CAPTURE.read_bytes())
    found = {
        r["agent_id"][-4:]: (
            r["tokens"],
            r["exchange"],
            r["delegation"],
            r["refresh"],
            r["unknown"],
        )
        for r in rows
    }
    assert found == {
        "Q1JW": (11, 6, 0, 5, 0),
        "BXWR": (6, 5, 0, 1, 0),
        "CDGK": (6, 5, 1, 0, 0),
        "383V": (3, 1, 2, 0, 0),
        "5HY3": (3, 3, 0, 0, 0),
    }
    ratios = {r["agent_id"][-4:]: r["refresh_ratio"] for r in rows}
    assert ratios["Q1JW"] == pytest.approx(5 / 11)
    assert ratios["BXWR"] == pytest.approx(1 / 6)
    assert sum(r["tokens"] for r in rows) == 29
    # From 23:10:00.610: 13 tokens, among them three refreshes (AGT3 +40330 at
    # 23:10:00.622, EGPV +160 at 23:11:18.135, AGT3 +122713 at 23:11:23.012).
    late = ingest_and_report(archive_url, tmp_path, b"", "--since", "2026-12-01T23:10:00.610Z")
    assert sum(r["refresh"] for r in late) == 3
    assert sum(r["tokens"] for r in late) == 13


def test_the_tokens_view(archive_url: str, tmp_path: Path) -> None:
    """The tokens view gives each token.issued its kind, for analysts' SQL."""
    ingest_and_report(archive_url, tmp_path, CAPTURE.read_bytes())
    out = invoke(
        ["sql", "SELECT kind, count(*) AS n FROM tokens GROUP BY kind ORDER BY kind",
         "--db", archive_url, "--analytics-dir", str(tmp_path / "copy"), "--format", "json"]
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert [{k: r[k] for k in ("kind", "n")} for r in json.loads(out.stdout)] == [
        {"kind": "delegation", "n": 3},
        {"kind": "exchange", "n": 20},
        {"kind": "refresh", "n": 6},
    ]
