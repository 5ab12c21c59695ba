"""The decoding stage: bytes in, frames out, for every framing a producer may use."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.events import Event, Rejection, normalise
from ingest.schema import events, metadata
from ingest.sse import DISCARD_LIMIT, Control, Frame, FrameDecoder, decode_all
from ingest.store import Received, Store


def frames(chunks: Iterable[bytes]) -> list[Frame | Control]:
    return list(decode_all(chunks))


def datas(chunks: Iterable[bytes]) -> list[str]:
    return [f.data for f in frames(chunks) if isinstance(f, Frame)]


def test_whatwg_example_multiline_data() -> None:
    # From the WHATWG spec: two data lines join with a newline.
    stream = b"data: YHOO\ndata: +2\ndata: 10\n\n"
    assert datas([stream]) == ["YHOO\n+2\n10"]


def test_whatwg_example_comments_ids_and_last_event_id() -> None:
    stream = (
        b": test stream\n\ndata: first event\nid: 1\n\n"
        b"data:second event\nid\n\ndata:  third event\n\n"
    )
    out = [f for f in frames([stream]) if isinstance(f, Frame)]
    assert [f.data for f in out] == ["first event", "second event", " third event"]
    assert [f.id for f in out] == ["1", "", ""]


def test_whatwg_example_empty_data_fields() -> None:
    # "data" with no value dispatches an empty string, a control-only frame here.
    stream = b"data\n\ndata\ndata\n\ndata:\n"
    out = frames([stream])
    assert out == [Control(), Frame(data="\n", event="message")]


def test_line_endings_cr_lf_crlf_are_equivalent() -> None:
    body = 'data: {"a":1}'
    for eol in ("\n", "\r", "\r\n"):
        stream = (f"event: grant{eol}{body}{eol}{eol}").encode()
        out = frames([stream])
        assert out == [Frame(data='{"a":1}', event="grant")], eol


def test_crlf_split_across_chunks() -> None:
    assert datas([b"data: x\r", b"\n\r", b"\n"]) == ["x"]


def test_byte_order_mark_is_dropped_only_at_stream_start() -> None:
    assert datas([b"\xef\xbb\xbfdata: a\n\n"]) == ["a"]
    # Split mid-BOM.
    assert datas([b"\xef", b"\xbb", b"\xbfdata: a\n\n"]) == ["a"]
    # A BOM later is data.
    assert datas([b"data: a\n\n\xef\xbb\xbfdata: b\n\n"]) == ["a"]


def test_comments_and_keepalives_are_not_frames() -> None:
    assert frames([b": keepalive\n\n: another\n\n"]) == []


def test_control_only_frames() -> None:
    decoder = FrameDecoder()
    out = decoder.feed(b"id: 7\n\nretry: 2500\n\n")
    assert out == [Control(id="7"), Control(id="7", retry=2500)]
    assert decoder.retry == 2500
    assert decoder.last_event_id == "7"


def test_unterminated_final_frame_is_not_dispatched() -> None:
    assert datas([b"data: a\n\ndata: b"]) == ["a"]


def test_invalid_utf8_survives_as_surrogates() -> None:
    [frame] = frames([b"data: \xff\xfe\n\n"])
    assert isinstance(frame, Frame)
    assert frame.data == "\udcff\udcfe"


def test_multibyte_character_split_across_chunks() -> None:
    text = "data: café 日本\n\n".encode()
    split = text.index("日".encode()) + 1
    assert datas([text[:split], text[split:]]) == ["café 日本"]


def test_huge_frame_is_truncated_and_skipped_to_its_end() -> None:
    big = b"data: " + b"x" * (DISCARD_LIMIT + 200_000) + b"\n\n"
    chunks = [big[i : i + 65536] for i in range(0, len(big), 65536)] + [b"data: next\n\n"]
    out = frames(chunks)
    assert len(out) == 2
    first, second = out
    assert isinstance(first, Frame) and first.truncated_length is not None
    assert first.truncated_length >= DISCARD_LIMIT
    assert len(first.data) <= 64 * 1024
    assert second == Frame(data="next", event="message")


def _stream(events: list[dict[str, object]], eol: str, bom: bool, style: int) -> bytes:
    mixed = eol == "mixed"
    """The same events framed in one of several valid ways."""
    parts = ["\ufeff"] if bom else []
    endings = ["\n", "\r", "\r\n"]
    for n, event in enumerate(events):
        if mixed:
            eol = endings[n % 3]
        text = json.dumps(event)
        if style == 0:
            parts.append(f"data: {text}{eol}{eol}")
        elif style == 1:
            parts.append(f": keepalive{eol}{eol}event: grant{eol}id: {n}{eol}data:{text}{eol}{eol}")
        elif style == 2:
            # Multi-line data: JSON allows a newline between tokens.
            head, _, tail = text.partition(", ")
            parts.append(f"data: {head},{eol}data: {tail}{eol}{eol}{eol}")
        else:
            parts.append(f"retry: 1000{eol}{eol}data: {text}{eol}: comment{eol}{eol}")
    return "".join(parts).encode()


events_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.text(alphabet="abcdef0123456789", min_size=1, max_size=8).map("evt_".__add__),
            "type": st.sampled_from(["grant.created", "token.issued", "x.other"]),
            "createdAt": st.just("2026-03-01T12:00:00.000Z"),
            "data": st.fixed_dictionaries(
                {"grantId": st.text(min_size=1, max_size=12), "note": st.text(max_size=20)}
            ),
        }
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(
    events=events_strategy,
    eol=st.sampled_from(["\n", "\r", "\r\n", "mixed"]),
    bom=st.booleans(),
    style=st.integers(min_value=0, max_value=3),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
)
def test_any_chunking_of_a_valid_stream_gives_the_same_events(
    events: list[dict[str, object]], eol: str, bom: bool, style: int, cuts: list[int]
) -> None:
    stream = _stream(events, eol, bom, style)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    bounds = zip([0, *points], [*points, len(stream)], strict=True)
    chunks = [stream[a:b] for a, b in bounds if b > a]
    whole = [normalise(d) for d in datas([stream])]
    pieces = [normalise(d) for d in datas(chunks)]
    assert pieces == whole
    assert all(isinstance(e, Event) for e in whole)
    # And the archive they make is the same.
    assert _archive(pieces) == _archive(whole)
    assert [e.id for e in whole if isinstance(e, Event)] == [e["id"] for e in events]


def _archive(items: list[Event | Rejection]) -> list[tuple[object, ...]]:
    store = Store.open("sqlite://")
    metadata.create_all(store.engine)
    now = datetime(2026, 3, 1, tzinfo=timezone.utc)
    store.write_batch("default", None, [Received(item, now) for item in items])
    with store.engine.connect() as conn:
        stored = list(conn.execute(sa.select(events).order_by(events.c.seq)).all())
    store.close()
    return [tuple(row) for row in stored]


def test_three_newlines_and_split_blank_line() -> None:
    assert datas([b"data: a\n\n\ndata: b\n\n"]) == ["a", "b"]
    assert datas([b"data: a\n", b"\n", b"data: b\n\n"]) == ["a", "b"]
    assert datas([b"data: a\r", b"\r", b"\ndata: b\r\n\r\n"]) == ["a", "b"]


def test_lf_alone_in_a_read_after_cr() -> None:
    # A read that is exactly "\n" after one ending in "\r" is the CRLF's LF.
    assert datas([b"data: a\r", b"\n", b"\ndata: b\n\n"]) == ["a", "b"]
    assert datas([b"data: a\r", b"\n", b"\r\n", b"data: b\r\n\r\n"]) == ["a", "b"]


def test_empty_data_with_a_space_is_control_only() -> None:
    assert frames([b"data: \n\n"]) == [Control()]
    assert frames([b"data:\n\n"]) == [Control()]


def test_last_event_id_carries_into_a_new_decoder() -> None:
    decoder = FrameDecoder(last_event_id="41")
    assert decoder.feed(b"data: x\n\n") == [Frame(data="x", id="41")]
    assert decoder.last_event_id == "41"


def test_partial_frame_is_reported() -> None:
    decoder = FrameDecoder()
    decoder.feed(b": keepalive\n\n")
    assert not decoder.partial
    decoder.feed(b'data: {"id": "evt_1", "ty')
    assert decoder.partial
    decoder.feed(b'pe": "x"}\n\n')
    assert not decoder.partial


def test_large_frame_in_small_reads_is_linear() -> None:
    # 4 MiB in 4 KiB reads: quadratic re-scanning would take minutes.
    body = b"data: " + b"y" * (4 * 1024 * 1024) + b"\n\n"
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    [frame] = frames(chunks)
    assert isinstance(frame, Frame) and len(frame.data) == 4 * 1024 * 1024
