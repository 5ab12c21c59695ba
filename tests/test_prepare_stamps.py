"""The stored text of an event time taken from the frame's own text is the formatted one."""

from __future__ import annotations

from datetime import datetime, timezone

from hypothesis import given
from hypothesis import strategies as st

from ingest.events import Event, normalise, normalise_stamped
from ingest.prepare import prepare_events, sqlite_time, stamp_text
from ingest.resume import latest_plausible
from ingest.timestamps import TimestampError, parse_event_time
from tests.test_reader_process import COPY_HOSTILE, MORE
from tests.test_seal_bound import FRAMES

NOW = datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)


@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
def test_the_usual_form_is_sliced_to_what_formatting_makes(moment: datetime) -> None:
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    if moment.year < 1000:
        stamp = f"{moment.year:04d}" + stamp[stamp.index("-") :]
    assert stamp_text(stamp) == sqlite_time(parse_event_time(stamp))


@given(st.text(alphabet="0123456789-T:.Zt +W", min_size=24, max_size=24))
def test_any_stamp_it_slices_is_one_the_parser_reads_the_same(stamp: str) -> None:
    try:
        parsed = parse_event_time(stamp)
    except TimestampError:
        return  # rejected before any row is made
    text = stamp_text(stamp)
    assert text is None or text == sqlite_time(parsed)


def test_other_forms_are_formatted() -> None:
    for stamp in (
        "2026-W49-3T13:28:06.047Z",  # an ISO week date of the same length
        "2026-12-02T13:28:06.047+00:00",
        "2026-12-02T13:28:06Z",
        "2026-12-02T13:28:06.047123Z",
        "2026-12-02 13:28:06.047Z",
        None,
    ):
        assert stamp_text(stamp) is None


def test_rows_made_with_stamps_are_the_rows_made_without() -> None:
    texts = [
        *FRAMES,
        *COPY_HOSTILE,
        MORE[2],
        '{"id":"evt_ms","type":"grant.created","timestamp":"2026-12-01T10:00:03.999Z"}',
        '{"id":"evt_off","type":"grant.created","createdAt":"2026-12-01T12:00:03.5+02:00"}',
    ]
    made = [normalise_stamped(text) for text in texts]
    pairs = [m for m in made if isinstance(m, tuple) and isinstance(m[0], Event)]
    assert len(pairs) == len(texts)
    events = [event for event, _ in pairs]
    assert events == [normalise(text) for text in texts]
    bound = latest_plausible(NOW)
    for target in ("sqlite", "postgresql"):
        plain = prepare_events(events, "default", NOW, "stream", bound, first_key=1, target=target)
        stamped = prepare_events(
            events,
            "default",
            NOW,
            "stream",
            bound,
            first_key=1,
            target=target,
            stamps=[s for _, s in pairs],
        )
        assert repr(stamped) == repr(plain)
    assert any(stamp_text(s) is not None for _, s in pairs)
