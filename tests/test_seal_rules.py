"""The chain's canonical forms and checks as pure functions: keys, rows, links, merges."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from ingest.seal.canonical import (
    GENESIS,
    Link,
    decode_keys,
    encode_keys,
    event_digest,
    netstring,
    row_digest,
    timestamp,
)
from ingest.seal.verify import Row, check_links, check_mapped, check_rows

AT = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=timezone.utc)


@given(st.sets(st.integers(min_value=1, max_value=10_000)))
def test_keys_round_trip_as_ranges(keys: set[int]) -> None:
    ordered = sorted(keys)
    encoded = encode_keys(ordered)
    assert list(decode_keys(encoded)) == ordered
    assert encoded.count(",") < len(ordered) or not ordered


@given(st.integers(min_value=1, max_value=10**12), st.integers(min_value=0, max_value=3000))
def test_a_range_of_keys_encodes_as_its_list_does(start: int, count: int) -> None:
    keys = range(start, start + count)
    assert encode_keys(keys) == encode_keys(list(keys))


def test_key_ranges_are_compact_and_must_ascend() -> None:
    assert encode_keys([1, 2, 3, 5, 7, 8, 9]) == "1-3,5,7-9"
    assert encode_keys([]) == ""
    try:
        encode_keys([2, 1])
    except ValueError as exc:
        assert "ascend" in str(exc)
    else:
        raise AssertionError("descending keys were accepted")


def test_netstrings_count_utf8_bytes_and_times_are_one_form() -> None:
    assert netstring("é,:") == "4:é,:,".encode()
    naive = AT.replace(tzinfo=None)
    other_zone = AT.astimezone(timezone(timedelta(hours=5, minutes=30)))
    forms = {timestamp(AT), timestamp(naive), timestamp(other_zone), timestamp(str(naive))}
    assert forms == {"2026-12-01T10:00:00.123456Z"}


def test_a_row_digest_changes_with_every_field_and_never_across_kinds() -> None:
    fields = [7, "evt_1", "default", "grant.created", AT, AT, "stream", '{"a":1}']
    base = event_digest(*fields)  # type: ignore[arg-type]
    assert base == row_digest("events", fields)
    for i in range(len(fields)):
        changed = list(fields)
        changed[i] = (
            AT + timedelta(microseconds=1)
            if isinstance(fields[i], datetime)
            else (8 if isinstance(fields[i], int) else str(fields[i]) + " ")
        )
        assert event_digest(*changed) != base, i  # type: ignore[arg-type]
    # Field boundaries are part of the form: moving a character across fields shows.
    moved = [7, "evt_1d", "efault", "grant.created", AT, AT, "stream", '{"a":1}']
    assert event_digest(*moved) != base  # type: ignore[arg-type]
    run = [1, "default", AT, AT, None, None, None, 1, 1, 0, 0, 0, AT, AT, "idle", 0, None]
    # NULL and the empty string are different values, and stay different.
    assert row_digest("runs", run) != row_digest("runs", [*run[:-1], ""])
    assert row_digest("runs", run) == row_digest("runs", list(run))


def chain(digests_per_link: list[list[bytes]], first_key: int = 1) -> list[Link]:
    links: list[Link] = []
    prev = GENESIS
    key = first_key
    for n, digests in enumerate(digests_per_link, start=1):
        keys = list(range(key, key + len(digests)))
        key += len(digests)
        link = Link(n, "events", prev, encode_keys(keys), len(keys), b"".join(digests), AT)
        links.append(link)
        prev = link.hash()
    return links


def d(i: int) -> bytes:
    return bytes([i]) * 32


def test_a_chain_checks_clean_and_each_break_is_named() -> None:
    links = chain([[d(1), d(2)], [d(3)], [d(4), d(5)]])
    assert list(check_links((link, link.hash()) for link in links)) == []
    # A hole, a link whose content changed, a wrong predecessor.
    assert "link 2 is missing" in str(next(check_links((x, x.hash()) for x in links[::2])))
    stored = [(x, x.hash()) for x in links]
    altered = Link(2, "events", links[1].prev, "3", 1, d(9), AT)
    found = [str(p) for p in check_links([stored[0], (altered, stored[1][1]), stored[2]])]
    assert found == [f"link 2 was altered: it hashes to {altered.hash()[:16]}..., "
                     f"not the {stored[1][1][:16]}... stored with it"]  # fmt: skip


def test_the_merge_names_changed_missing_and_unsealed_rows() -> None:
    links = chain([[d(1), d(2)], [d(3)]])
    rows = [Row(1, d(1), "1"), Row(2, d(7), "2"), Row(4, d(4), "4")]
    problems = [(p.kind, str(p)) for p in check_rows("events", links, rows)]
    assert problems == [
        ("changed", "event 2 was changed after link 1 sealed it"),
        ("missing", "event 3 is missing: link 2 sealed it, no row has it"),
        ("unsealed", "event 4 is in no link: it was written outside ingest (or the archive "
         "predates the chain: run `grantex-archive seal`)"),
    ]  # fmt: skip
    assert list(check_rows("events", links, [Row(k, d(k), str(k)) for k in (1, 2, 3)])) == []


def test_interleaved_run_links_are_checked_through_the_map() -> None:
    later = Link(2, "runs", "x", "3", 1, d(3), AT)
    earlier = Link(1, "runs", "x", "1-2,4", 3, d(1) + d(2) + d(4), AT)
    rows = [Row(k, d(k), str(k)) for k in (1, 2, 3, 4)]
    assert list(check_mapped("runs", [earlier, later], rows)) == []
    assert [p.kind for p in check_rows("runs", [earlier, later], rows)] != []
    twice = Link(3, "runs", "x", "3", 1, d(3), AT)
    assert [p.kind for p in check_mapped("runs", [earlier, later, twice], rows)] == ["link"]
