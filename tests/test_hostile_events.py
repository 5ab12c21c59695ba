"""Hostile and out-of-range frames: each is dead-lettered with a reason, nothing else stops.

One frame that the store cannot take would end every run that re-reads it
through the resume overlap, so the archive would stop for good. These tests
feed such frames to ``normalise``, to the store on both databases, and to
the real ``ingest`` command, and check the events around them are archived.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest import migrate
from ingest.events import MAX_DEPTH, MAX_TEXT, Event, Rejection, normalise
from ingest.store import Received, Store
from tests.conftest import invoke, rows
from tests.scripted_server import Reply, ScriptedServer, frame

pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")

UTC = timezone.utc
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)

# The live service's catalogue (producer notes) and the documented one.
KNOWN_TYPES = [
    "grant.created",
    "grant.revoked",
    "token.issued",
    "budget.threshold",
    "budget.exhausted",
    "anomaly.auto_revoked",
    "consent_bundle.created",
    "consent_bundle.synced",
    "consent_bundle.revoked",
    "dpdp.consent.created",
    "dpdp.consent.withdrawn",
    "dpdp.erasure.completed",
    "dpdp.grievance.filed",
    "vc.issued",
    "sd-jwt.issued",
    "sd-jwt.presented",
    "passport.token-exchange",
    "passport.issued",
    "passport.revoked",
    "fido.registered",
    "fido.assertion",
    "sso.connection.created",
    "sso.connection.updated",
    "sso.connection.deleted",
    "sso.login",
    "vault.credential.stored",
    "vault.credential.deleted",
    "vault.credential.exchanged",
]
DATA_FIELDS = [
    "grantId",
    "agentId",
    "principalId",
    "revokedBy",
    "tokenId",
    "method",
    "pct",
    "percentage",
    "remaining",
    "initial",
    "scopes",
    "expiresAt",
    "cascade",
    "revokedGrants",
    "parentGrantId",
    "userId",
    "dataPrincipalId",
]


def envelope(
    event_id: str = "evt_1",
    type_: str = "budget.threshold",
    stamp: str = "2026-03-01T12:00:00.000Z",
    **data: Any,
) -> str:
    return json.dumps({"id": event_id, "type": type_, "createdAt": stamp, "data": data})


def nested(depth: int, bracket: str) -> str:
    if bracket == "[":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


# -- normalise: each hostile shape is a rejection with a specific reason ---------------


@pytest.mark.parametrize("depth", [1000, 2000, 100_000])
@pytest.mark.parametrize("bracket", ["[", "{"])
def test_deeply_nested_json_is_rejected_not_raised(depth: int, bracket: str) -> None:
    text = (
        '{"id":"evt_deep","type":"grant.created","createdAt":"2026-03-01T12:00:00Z",'
        f'"data":{{"x":{nested(depth, bracket)}}}}}'
    )
    result = normalise(text)
    assert isinstance(result, Rejection)
    assert result.reason == f"JSON nested deeper than {MAX_DEPTH} levels"
    assert result.event_id == "evt_deep"


def test_nesting_up_to_the_limit_is_archived() -> None:
    inner = nested(MAX_DEPTH - 2, "[")  # envelope and data add two levels
    result = normalise(
        '{"id":"evt_ok","type":"t","createdAt":"2026-03-01T12:00:00Z","data":{"x":' + inner + "}}"
    )
    assert isinstance(result, Event)
    # Brackets inside strings do not count.
    result = normalise(envelope(note="[" * 5000 + "{" * 5000))
    assert isinstance(result, Event)


@pytest.mark.parametrize("field", ["pct", "percentage", "remaining", "initial"])
@pytest.mark.parametrize("number", ["1e400", "-1e400", "9" * 400, '"1e400"', '"' + "9" * 400 + '"'])
def test_numbers_too_large_for_a_float_are_rejected(field: str, number: str) -> None:
    text = (
        '{"id":"evt_big","type":"budget.threshold","createdAt":"2026-03-01T12:00:00Z",'
        f'"data":{{"grantId":"g1","{field}":{number}}}}}'
    )
    result = normalise(text)
    assert isinstance(result, Rejection), result
    assert result.reason.startswith(f"'data.{field}' is out of range for a number")
    assert result.event_id == "evt_big"


def test_numbers_in_range_and_non_numbers_still_archive() -> None:
    result = normalise(envelope(pct=1e308, remaining="20.0000", initial="n/a"))
    assert isinstance(result, Event)
    assert (result.percentage, result.remaining, result.initial) == (1e308, 20.0, None)


@pytest.mark.parametrize("key", ["createdAt", "timestamp"])
@pytest.mark.parametrize(
    "stamp",
    [
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59.999-00:01",
        "0001-01-01 00:30:00+00:45",
    ],
)
def test_timestamps_outside_the_utc_range_are_rejected(key: str, stamp: str) -> None:
    text = json.dumps({"id": "evt_t", "type": "t", key: stamp, "data": {}})
    result = normalise(text)
    assert isinstance(result, Rejection)
    assert result.reason == f"unparseable {key}: outside the representable UTC range: {stamp!r}"


def test_extreme_timestamps_inside_the_range_archive() -> None:
    for stamp in ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "0001-01-01T01:00:00+01:00"]:
        assert isinstance(normalise(envelope(stamp=stamp)), Event)


@pytest.mark.parametrize("field", ["id", "type"])
def test_envelope_text_longer_than_the_column_is_rejected(field: str) -> None:
    value = "x" * (MAX_TEXT + 1)
    text = json.dumps(
        {"id": "evt_1", "type": "t", "createdAt": "2026-03-01T12:00:00Z", "data": {}, field: value}
    )
    result = normalise(text)
    assert isinstance(result, Rejection)
    assert result.reason == f"'{field}' is longer than {MAX_TEXT} characters"
    assert result.event_id == (None if field == "id" else "evt_1")


@pytest.mark.parametrize(
    "field", ["grantId", "agentId", "principalId", "revokedBy", "tokenId", "method"]
)
def test_identifiers_longer_than_the_column_are_rejected(field: str) -> None:
    result = normalise(envelope(**{field: "é" * (MAX_TEXT + 1)}))
    assert isinstance(result, Rejection)
    assert result.reason == f"'data.{field}' is longer than {MAX_TEXT} characters"
    at_limit = normalise(envelope(**{field: "é" * MAX_TEXT}))
    assert isinstance(at_limit, Event)


def test_an_oversized_id_is_not_kept_as_the_rejections_event_id() -> None:
    result = normalise(json.dumps({"id": "e" * 300, "type": 5}))
    assert isinstance(result, Rejection)
    assert result.event_id is None


def test_rejections_carry_the_hash_of_the_whole_frame() -> None:
    first = normalise("not json")
    again = normalise("not json")
    other = normalise("not json either")
    assert isinstance(first, Rejection) and isinstance(again, Rejection)
    assert isinstance(other, Rejection)
    assert len(first.raw_sha256) == 64
    assert first.raw_sha256 == again.raw_sha256 != other.raw_sha256


# -- property: arbitrary JSON in every field of every known type --------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=20,
)
hostile_text = st.sampled_from(
    [
        nested(2000, "["),
        "x" * 300,
        "\x00",
        "\ud800",
        "9999-12-31T23:59:59-23:59",
        "1e400",
        "",
        "DEEP",
    ]
)
field_values = json_values | hostile_text


@st.composite
def frames(draw: st.DrawFn) -> str:
    data = {
        name: draw(field_values)
        for name in draw(st.lists(st.sampled_from(DATA_FIELDS), unique=True, max_size=6))
    }
    env: dict[str, Any] = {
        "id": draw(st.text(min_size=1, max_size=300) | field_values),
        "type": draw(st.sampled_from(KNOWN_TYPES) | field_values),
        draw(st.sampled_from(["createdAt", "timestamp"])): draw(
            st.sampled_from(["2026-03-01T12:00:00.000Z", "0001-01-01T00:00:00Z"]) | field_values
        ),
        "data": data if draw(st.booleans()) else draw(field_values),
    }
    text = json.dumps(env, ensure_ascii=draw(st.booleans()))
    # Deep values are spliced in as text: json.dumps cannot write them.
    return text.replace('"DEEP"', nested(draw(st.integers(70, 3000)), "{"))


@given(frames())
@settings(max_examples=400, deadline=None)
def test_normalise_never_raises(text: str) -> None:
    assert isinstance(normalise(text), (Event, Rejection))


@given(st.lists(frames(), min_size=1, max_size=8))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_batch_of_frames_is_stored_on_both_databases(store: Store, texts: list[str]) -> None:
    batch = [Received(normalise(text), NOW) for text in texts]
    result = store.write_batch("prop", None, batch)
    events = sum(1 for entry in batch if isinstance(entry.item, Event))
    assert result.inserted + result.duplicates == events


# -- the real command: the run goes on around hostile frames -----------------------------


def good(n: int) -> str:
    return envelope(f"evt_{n}", "grant.created", f"2026-03-01T12:00:{n:02d}.000Z", grantId=f"g{n}")


HOSTILE = {
    "deep": (
        '{"id":"evt_deep","type":"grant.created","createdAt":"2026-03-01T12:00:00Z","data":'
        + nested(100_000, "{")
        + "}",
        "JSON nested deeper than",
    ),
    "huge pct": (
        '{"id":"evt_pct","type":"budget.threshold","createdAt":"2026-03-01T12:00:00Z",'
        '"data":{"grantId":"g1","pct":1e400}}',
        "'data.pct' is out of range",
    ),
    "huge remaining": (
        '{"id":"evt_rem","type":"budget.exhausted","createdAt":"2026-03-01T12:00:00Z",'
        '"data":{"grantId":"g1","remaining":' + "9" * 400 + "}}",
        "'data.remaining' is out of range",
    ),
    "late stamp": (envelope("evt_late", stamp="9999-12-31T23:59:59-23:59"), "outside the"),
    "early stamp": (envelope("evt_early", stamp="0001-01-01T00:00:00+01:00"), "outside the"),
    "long id": (envelope("e" * 300), "'id' is longer than 255"),
    "long type": (envelope("evt_type", "t" * 300), "'type' is longer than 255"),
    "long grant": (envelope("evt_grant", grantId="g" * 300), "'data.grantId' is longer"),
}


def _ingest(url: str, server: ScriptedServer, *extra: str) -> Any:
    return invoke(
        [
            "ingest",
            "--db",
            url,
            "--base-url",
            server.base_url,
            "--max-runtime",
            "20",
            "--until-idle",
            "0.5",
            *extra,
        ]
    )


def test_hostile_frames_are_dead_lettered_and_the_run_goes_on(archive_url: str) -> None:
    if archive_url.startswith("postgresql"):
        migrate.upgrade(archive_url)
    chunks = []
    for n, (text, _reason) in enumerate(HOSTILE.values(), start=1):
        chunks += [frame(good(n)), frame(text)]
    chunks.append(frame(good(50)))
    # A conflicting duplicate whose payload is the hostile one.
    chunks.append(frame(good(1).replace('"g1"', nested(3000, "["))))
    for _run in range(2):
        with ScriptedServer([Reply(chunks=chunks, hold=5)]) as server:
            result = _ingest(archive_url, server)
        assert result.exit_code == 0, result.output
    stored = [r[0] for r in rows(archive_url, "SELECT id FROM events ORDER BY seq")]
    assert stored == [f"evt_{n}" for n in range(1, len(HOSTILE) + 1)] + ["evt_50"]
    rejected = rows(archive_url, "SELECT reason, repeats FROM rejected_events ORDER BY id")
    assert len(rejected) == len(HOSTILE) + 1
    for (reason, repeats), expected in zip(
        rejected, [r for _t, r in HOSTILE.values()] + ["JSON nested deeper than"], strict=True
    ):
        assert expected in reason
        # The second run re-read every frame: recorded once, counted twice.
        assert repeats == 1
    runs = rows(archive_url, "SELECT outcome, exit_code, rejected FROM ingest_runs ORDER BY id")
    assert runs == [("idle", 0, len(HOSTILE) + 1)] * 2


def test_repeated_rejects_are_counted_not_stored_again(archive_url: str) -> None:
    migrate.upgrade(archive_url)
    store = Store.open(archive_url)
    try:
        bad = normalise("{broken")
        other = normalise("[1,2")
        later = NOW + timedelta(minutes=5)
        store.write_batch("a", None, [Received(bad, NOW), Received(bad, NOW)])
        store.write_batch("a", None, [Received(bad, later), Received(other, later)])
        # Another source keeps its own record of the same frame.
        store.write_batch("b", None, [Received(bad, later)])
        found = rows(
            archive_url,
            "SELECT source, raw, repeats, last_received_at FROM rejected_events ORDER BY id",
        )
    finally:
        store.close()
    assert [(s, raw, n) for s, raw, n, _at in found] == [
        ("a", "{broken", 2),
        ("a", "[1,2", 0),
        ("b", "{broken", 0),
    ]
    last = found[0][3]
    last = datetime.fromisoformat(last) if isinstance(last, str) else last
    assert last.replace(tzinfo=UTC) == later.replace(tzinfo=None).replace(tzinfo=UTC)


# -- a far-future event must not move the resume point ----------------------------------


def test_far_future_event_does_not_poison_the_resume_point(archive_url: str) -> None:
    migrate.upgrade(archive_url)
    base = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
    first = [
        frame(envelope(f"evt_{n}", stamp=(base + timedelta(minutes=n)).isoformat()))
        for n in range(1, 4)
    ]
    first.append(frame(envelope("evt_9999", stamp="9999-12-31T23:59:59.000Z")))
    with ScriptedServer([Reply(chunks=first, hold=5)]) as server:
        result = _ingest(archive_url, server, "--since", base.isoformat())
    assert result.exit_code == 0, result.output
    assert "evt_9999" in result.output and "not used as the resume point" in result.output
    assert rows(archive_url, "SELECT count(*) FROM events") == [(4,)]
    with ScriptedServer([Reply(hold=5)]) as server:
        assert _ingest(archive_url, server, "--overlap", "60").exit_code == 0
        since = server.requests[0].query["since"][0]
    expected = base + timedelta(minutes=3) - timedelta(seconds=60)
    assert datetime.fromisoformat(since.replace("Z", "+00:00")) == expected


def test_resume_query_passes_over_implausible_events_on_both_databases(archive_url: str) -> None:
    migrate.upgrade(archive_url)
    store = Store.open(archive_url)
    arrived = datetime(2026, 3, 1, tzinfo=UTC)
    try:
        batch = [
            Received(normalise(envelope("a", stamp="2026-02-28T23:00:00Z")), arrived),
            Received(normalise(envelope("b", stamp="2026-03-01T23:59:00Z")), arrived),
            Received(normalise(envelope("c", stamp="2026-03-02T00:01:00Z")), arrived),
            Received(normalise(envelope("d", stamp="9999-12-31T23:59:59Z")), arrived),
        ]
        store.write_batch("s", None, batch)
        # b lies 23h59m after its arrival (plausible), c a day and a minute.
        assert store.newest_occurred_at("s") == datetime(2026, 3, 1, 23, 59, tzinfo=UTC)
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == 4
    finally:
        store.close()


def test_the_warning_names_the_event(caplog: pytest.LogCaptureFixture) -> None:
    from ingest.batching import _warn_implausible

    event = normalise(envelope("evt_far", stamp="9999-01-01T00:00:00Z"))
    assert isinstance(event, Event)
    with caplog.at_level(logging.WARNING, logger="grantex_archive"):
        _warn_implausible(event.id, event.occurred_at, NOW)
    assert "evt_far" in caplog.text and "9999-01-01T00:00:00.000Z" in caplog.text


def test_json_log_lines_carry_fields() -> None:
    from ingest.logs import JsonFormatter

    record = logging.LogRecord("grantex_archive", logging.INFO, __file__, 1, "progress", (), None)
    record.fields = {"received": 7, "message": "not overridden"}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["received"] == 7 and entry["message"] == "progress"
