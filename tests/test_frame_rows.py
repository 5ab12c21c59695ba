"""Rows made in one pass are the rows of the reference path, frame for frame.

The reference is the frame normalised (``normalise_frame_stamped``: an event or a
rejection), then ``sqlite_row``. ``frame_rows`` takes a shortcut for usual frames
(``usual_row``) and the reference for the rest: these tests hold its rows, times and
rejections to the reference's over the real captures, the simulator's events, and
generated frames that sit on both sides of every condition of the shortcut.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.events import Rejection
from ingest.frame_rows import frame_rows, normalise_frame_stamped, usual_row
from ingest.prepare import sqlite_row
from ingest.simulator.generator import generate_events
from ingest.sse import Frame, decode_all
from tests.test_hostile_events import frames as hostile_frames

DATA = Path(__file__).parent / "data"
RECEIVED = "2026-12-01 12:00:00.250000"
SOURCE = "default"


def reference(
    frames: list[Frame],
) -> tuple[list[tuple[Any, ...]], list[datetime], list[Rejection]]:
    rows, times, rejections = [], [], []
    for frame in frames:
        made = normalise_frame_stamped(frame)
        if isinstance(made, Rejection):
            rejections.append(made)
        else:
            event, stamp = made
            rows.append(sqlite_row(event, SOURCE, RECEIVED, stamp))
            times.append(event.occurred_at)
    return rows, times, rejections


def assert_same(frames: list[Frame]) -> None:
    rows, times, rejections = frame_rows(frames, SOURCE, RECEIVED)
    want_rows, want_times, want_rejections = reference(frames)
    # repr tells NaN, -0.0, 1 and 1.0 apart, as the database and the digests do.
    assert repr(rows) == repr(want_rows)
    assert [(t, t.tzinfo) for t in times] == [(t, t.tzinfo) for t in want_times]
    assert rejections == want_rejections


def capture_frames(name: str) -> list[Frame]:
    return [f for f in decode_all([(DATA / name).read_bytes()]) if isinstance(f, Frame)]


def simulator_frames(count: int) -> list[Frame]:
    start = datetime(2026, 11, 30, tzinfo=timezone.utc)
    return [
        Frame(json.dumps(envelope, separators=(",", ":")))
        for envelope in generate_events(7, start, count, 60.0, "live")
    ]


def test_the_real_captures_take_the_shortcut_and_give_the_reference_rows() -> None:
    for name in ("live-capture-full.sse", "live-capture.sse"):
        frames = capture_frames(name)
        assert frames
        assert all(usual_row(f.data, SOURCE, RECEIVED) is not None for f in frames)
        assert_same(frames)


def test_the_simulators_events_take_the_shortcut_and_give_the_reference_rows() -> None:
    frames = simulator_frames(3000)
    taken = sum(usual_row(f.data, SOURCE, RECEIVED) is not None for f in frames)
    assert taken == len(frames)
    assert_same(frames)


def test_frames_the_shortcut_declines_take_the_reference_path() -> None:
    usual = '{"id":"evt_1","type":"grant.created","timestamp":"2026-12-01T10:00:00.000Z"'
    declined = [
        usual + ',"data":{"grantId":"gr\\u00e9"}}',  # an escape: the reference decodes it
        usual + ',"data":{"grantId":"gr\u00e9"}}',  # not ASCII
        usual + ',"data":{"grantId":12}}',  # an integer identifier becomes text
        usual + ',"data":{"remaining":true}}',  # a boolean is no number
        usual + ',"data":{"remaining":1e400}}',  # out of range: rejected
        usual + ',"data":{"remaining":NaN}}',  # not strict JSON
        usual + ',"data":{"remaining":"nan"}}',  # a numeric string that is no number
        usual + ',"data":{"remaining":123456789012345678901234567890}}',
        usual + ',"data":{"grantId":"' + "g" * 256 + '"}}',  # too long: rejected
        usual + ',"data":null}',  # not an object: rejected
        usual + ',"data":[1]}',
        usual.replace("10:00:00.000Z", "10:00:00.000+00:00") + "}",  # another form of time
        usual.replace("2026-12-01", "2026-02-30") + "}",  # no such day: rejected
        usual.replace('"evt_1"', '" "') + "}",  # a blank id: rejected
        usual.replace('"evt_1"', "7") + "}",
        usual + "} trailing",  # invalid JSON: rejected
    ]
    frames = [Frame(text) for text in declined]
    assert all(usual_row(f.data, SOURCE, RECEIVED) is None for f in frames)
    assert_same(frames)
    truncated = Frame(usual + "}", truncated_length=5_000_000)
    assert_same([truncated, *frames])
    assert len(frame_rows([truncated], SOURCE, RECEIVED)[2]) == 1


# -- generated frames near the shortcut's every condition ---------------------------------

TEXTS = st.sampled_from(["evt_1", "", " ", "a" * 255, "a" * 256, "é", "x\x00y", "\ud800", "4"])
NUMBERS = st.sampled_from(
    ["4.5000", " 1 ", "nan", "inf", "1e400", "1_000", "abc", "", "-0", "0x10"]
) | st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
VALUES = TEXTS | NUMBERS | st.text(max_size=8) | st.just([]) | st.just({"a": 1})
ID_FIELDS = ["grantId", "agentId", "principalId", "userId", "dataPrincipalId", "revokedBy"]
FIELDS = [*ID_FIELDS, "tokenId", "method", "percentage", "pct", "remaining", "initial", "other"]


def usual_or(draw: st.DrawFn, usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> Any:
    """Mostly the usual value, so that whole frames often take the shortcut."""
    return draw(usual if draw(st.integers(0, 4)) else odd)


@st.composite
def stamps(draw: st.DrawFn) -> Any:
    moment = draw(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)))
    usual = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    usual = f"{moment.year:04d}" + usual[usual.index("-") :]
    odd = st.sampled_from(
        [
            usual.replace("Z", "+00:00"),
            usual.replace("T", "t"),
            usual[:-1] + "z",
            usual.replace("-", "/"),
            usual[:5] + "13" + usual[7:],
            (moment + timedelta(hours=1)).isoformat() + "+01:00",
        ]
    )
    return usual_or(draw, st.just(usual), odd | VALUES)


USUAL_VALUES = {
    "percentage": st.floats(0, 100) | st.integers(0, 100),
    "pct": st.integers(0, 100),
    "remaining": st.sampled_from(["4.5000", "0"]) | st.floats(-1e6, 1e6),
    "initial": st.floats(0, 1e6),
}


@st.composite
def near_usual(draw: st.DrawFn) -> str:
    envelope: dict[str, Any] = {}
    if draw(st.integers(0, 19)):
        envelope["id"] = usual_or(
            draw, st.from_regex(r"evt_[0-9A-Z]{1,26}", fullmatch=True), VALUES
        )
    if draw(st.integers(0, 19)):
        envelope["type"] = usual_or(draw, st.just("budget.threshold"), VALUES)
    keys = usual_or(
        draw,
        st.sampled_from([["timestamp"], ["createdAt"]]),
        st.lists(st.sampled_from(["timestamp", "createdAt"]), max_size=2),
    )
    for key in keys:
        envelope[key] = draw(stamps())
    if draw(st.integers(0, 5)):
        names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=6))
        envelope["data"] = {
            name: usual_or(draw, USUAL_VALUES.get(name, st.text("abc_019", max_size=12)), VALUES)
            for name in names
        }
    elif draw(st.booleans()):
        envelope["data"] = draw(VALUES)
    text = json.dumps(envelope, ensure_ascii=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0 and "data" in envelope:
        text = text[:-1] + ', "data": {"grantId": "later"}}'  # a repeated key: the last wins
    return text


@given(st.lists(near_usual() | hostile_frames(), min_size=1, max_size=6))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_frames_give_the_reference_rows(texts: list[str]) -> None:
    assert_same([Frame(text) for text in texts])


def test_the_generated_frames_reach_both_sides_of_the_shortcut() -> None:
    seen: set[bool] = set()

    @given(near_usual())
    @settings(max_examples=300, deadline=None)
    def one(text: str) -> None:
        seen.add(usual_row(text, SOURCE, RECEIVED) is not None)

    one()
    assert seen == {True, False}


def test_a_repeated_key_counts_once_with_its_last_value() -> None:
    text = (
        '{"id":"evt_1","type":"t","timestamp":"2026-12-01T10:00:00.000Z",'
        '"data":{"grantId":"first"},"data":{"grantId":"last","grantId":"final"}}'
    )
    made = usual_row(text, SOURCE, RECEIVED)
    assert made is not None and made[0][5] == "final"
    assert_same([Frame(text)])
