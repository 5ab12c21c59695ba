"""docs/integrity.md is enough to re-implement verification: a standard-library verifier
(tests/independent_verifier.py) agrees with `grantex-archive verify-archive` on real archives.

The archive is written by the product itself (`grantex-archive demo`, then rejected
frames through :meth:`Store.write_batch`) and tampered with by plain SQL; both
verifiers must report exactly the same differences.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingest.events import reject
from ingest.rows import Received
from ingest.seal import canonical
from ingest.store import Store
from tests import independent_verifier as iv
from tests.conftest import cli_command, invoke

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "integrity.md"

# The worked example of docs/integrity.md: the row as SQLite stores it, and the values the
# document prints for it (the test checks the document holds them, and both verifiers
# compute them).
EXAMPLE_PAYLOAD = (
    '{"id":"evt_01JNQ3V8Z5K4Y2C7M9D1XW6T0B","type":"budget.threshold",'
    '"timestamp":"2026-03-01T09:30:00.250Z","data":{"grantId":"grnt_01JNQ3R2AB7CDEFGHJKMNPQRST",'
    '"pct":80,"remaining":"20.0000"}}'
)
EXAMPLE_ROW = (
    42,
    "evt_01JNQ3V8Z5K4Y2C7M9D1XW6T0B",
    "default",
    "budget.threshold",
    "2026-03-01 09:30:00.250000",
    "2026-03-01 09:30:01.004512",
    "stream",
    EXAMPLE_PAYLOAD,
    # grant_id, agent_id, principal_id, revoked_by, token_id, method,
    "grnt_01JNQ3R2AB7CDEFGHJKMNPQRST", None, None, None, None, None,
    # percentage, remaining, initial
    80.0, 20.0, None,
)  # fmt: skip
EXAMPLE_DIGEST = "655100acfeb18c1cd248bc4faeb08036372c31ad85588ac037af00e18c83c90e"
EXAMPLE_LINK_CREATED = "2026-03-01 09:30:01.010000"
EXAMPLE_LINK_HASH = "d65aecbd99c722f378e4e1aaabf41ab1cc4c23d2ea4131ce1d161c6f099c74e6"


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite archive the product wrote: 2,000 events, a run, and three rejected frames."""
    path = tmp_path_factory.mktemp("sealed") / "archive.db"
    url = f"sqlite:///{path}"
    subprocess.run(
        [*cli_command(), "demo", "--no-gap", "--events", "2000", "--db", url],
        cwd=path.parent,
        check=True,
        capture_output=True,
        timeout=300,
    )
    now = datetime.now(timezone.utc)
    frames = [
        reject("not JSON", "data: café {"),
        reject("no type", '{"id":"evt_x"}', event_id="evt_x"),
        reject("not JSON", "data: ☃"),
    ]
    store = Store.open(url)
    try:
        store.write_batch("default", None, [Received(frame, now) for frame in frames])
    finally:
        store.close()
    return path


@pytest.fixture
def archive(written: Path, tmp_path: Path) -> Path:
    """A copy of the written archive, to tamper with."""
    path = tmp_path / "archive.db"
    shutil.copyfile(written, path)
    return path


def execute(path: Path, *statements: str) -> None:
    db = sqlite3.connect(path)
    try:
        with db:
            for statement in statements:
                db.execute(statement)
    finally:
        db.close()


def fetch(path: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def value(path: Path, sql: str) -> object:
    return fetch(path, sql)[0][0]


def agree(path: Path) -> list[str]:
    """Run both verifiers; assert they report the same differences; return them."""
    result = invoke(["verify-archive", "--db", f"sqlite:///{path}"])
    ours = iv.verify(path)
    if not ours:
        assert result.exit_code == 0, result.output
        assert "verified" in result.stdout
        return []
    assert result.exit_code == 1, result.output
    listed = [line[2:] for line in result.stderr.splitlines() if line.startswith("  ")]
    total = re.search(r"\(([\d,]+) differences?\)", result.stderr)
    assert total is not None, result.stderr
    assert int(total.group(1).replace(",", "")) == len(ours)
    if listed and listed[-1].startswith("... and "):
        listed.pop()
        assert set(listed) <= set(ours)
    else:
        assert sorted(listed) == sorted(ours)
    assert f"first: {listed[0]}" in result.stderr
    return ours


def link_of(path: Path, kind: str, key: int) -> int:
    """The number of the link that seals a row (the demo's batches vary in size)."""
    links = fetch(path, "SELECT n, keys FROM chain_links WHERE kind = ?", kind)
    (n,) = [n for n, keys in links if key in iv.decode_keys(str(keys))]
    return int(str(n))


def event_name(path: Path, seq: int) -> str:
    return f"seq {seq} (id {value(path, f'SELECT id FROM events WHERE seq = {seq}')})"


def test_the_untouched_archive_verifies(written: Path) -> None:
    assert value(written, "SELECT count(*) FROM rejected_events") == 3
    assert agree(written) == []
    assert iv.main([str(written)]) == 0


def test_a_changed_payload_byte(archive: Path) -> None:
    name = event_name(archive, 700)
    execute(archive, "UPDATE events SET payload = replace(payload, '\"', ' \"') WHERE seq = 700")
    assert agree(archive) == [f"event {name} was changed after link 1 sealed it"]


@pytest.mark.parametrize(
    "assignment",
    ["type = 'grant.created'", "occurred_at = '2026-01-01 00:00:00.000000'", "channel = 'webhook'"],
)
def test_a_changed_column(archive: Path, assignment: str) -> None:
    name, n = event_name(archive, 1500), link_of(archive, "events", 1500)
    execute(archive, f"UPDATE events SET {assignment} WHERE seq = 1500")
    assert agree(archive) == [f"event {name} was changed after link {n} sealed it"]


def test_a_deleted_row(archive: Path) -> None:
    n = link_of(archive, "events", 1500)
    execute(archive, "DELETE FROM events WHERE seq = 1500")
    assert agree(archive) == [f"event 1500 is missing: link {n} sealed it, no row has it"]


def test_an_inserted_row_with_a_fresh_seq(archive: Path) -> None:
    execute(
        archive,
        "INSERT INTO events (id, source, type, occurred_at, received_at, payload, channel) "
        "SELECT 'evt_forged', source, 'grant.revoked', occurred_at, received_at, payload, "
        "channel FROM events WHERE seq = 5",
    )
    assert agree(archive) == [
        f"event {event_name(archive, 2001)} is in no link: it was written outside ingest "
        "(or the archive predates the chain: run `grantex-archive seal`)"
    ]


def test_an_inserted_row_with_a_reused_seq(archive: Path) -> None:
    execute(
        archive,
        "DELETE FROM events WHERE seq = 10",
        "INSERT INTO events (seq, id, source, type, occurred_at, received_at, payload, channel) "
        "SELECT 10, 'evt_forged', source, type, occurred_at, received_at, payload, channel "
        "FROM events WHERE seq = 11",
    )
    assert agree(archive) == [f"event {event_name(archive, 10)} was changed after link 1 sealed it"]


def test_two_rows_swapped(archive: Path) -> None:
    execute(
        archive,
        "UPDATE events SET seq = -1 WHERE seq = 20",
        "UPDATE events SET seq = 20 WHERE seq = 21",
        "UPDATE events SET seq = 21 WHERE seq = -1",
    )
    assert agree(archive) == [
        f"event {event_name(archive, 20)} was changed after link 1 sealed it",
        f"event {event_name(archive, 21)} was changed after link 1 sealed it",
    ]


@pytest.mark.parametrize(
    ("event_type", "assignment"),
    [
        ("grant.revoked", "revoked_by = 'agent'"),
        ("token.issued", "grant_id = 'grnt_forged'"),
        ("budget.threshold", "percentage = 99"),
        ("budget.threshold", "remaining = NULL"),
    ],
)
def test_a_changed_derived_column(archive: Path, event_type: str, assignment: str) -> None:
    """The columns the reports read instead of the payload are sealed with it: an edit of
    one of them alone (the payload untouched) is caught."""
    seq = int(str(value(archive, f"SELECT min(seq) FROM events WHERE type = '{event_type}'")))
    column = assignment.split()[0]
    before = fetch(archive, f"SELECT {column}, payload FROM events WHERE seq = {seq}")
    name, n = event_name(archive, seq), link_of(archive, "events", seq)
    execute(archive, f"UPDATE events SET {assignment} WHERE seq = {seq}")
    after = fetch(archive, f"SELECT {column}, payload FROM events WHERE seq = {seq}")
    assert after[0][0] != before[0][0] and after[0][1] == before[0][1]
    assert agree(archive) == [f"event {name} was changed after link {n} sealed it"]


def test_a_null_derived_column_set_to_the_empty_string(archive: Path) -> None:
    seq = int(str(value(archive, "SELECT min(seq) FROM events WHERE method IS NULL")))
    name, n = event_name(archive, seq), link_of(archive, "events", seq)
    execute(archive, f"UPDATE events SET method = '' WHERE seq = {seq}")
    assert agree(archive) == [f"event {name} was changed after link {n} sealed it"]


def test_a_changed_run_record(archive: Path) -> None:
    n = link_of(archive, "runs", 1)
    execute(archive, "UPDATE ingest_runs SET inserted = inserted - 1 WHERE id = 1")
    assert agree(archive) == [f"run record 1 was changed after link {n} sealed it"]


def test_a_changed_rejected_frame(archive: Path) -> None:
    first = value(archive, "SELECT min(id) FROM rejected_events")
    n = link_of(archive, "rejected", int(str(first)))
    execute(archive, f"UPDATE rejected_events SET reason = 'fine' WHERE id = {first}")
    assert agree(archive) == [f"rejected frame {first} was changed after link {n} sealed it"]


def test_the_unsealed_counters_and_tables_may_change(archive: Path) -> None:
    """What docs/integrity.md says is not sealed: both verifiers accept changes to it."""
    execute(
        archive,
        "UPDATE rejected_events SET repeats = 7, last_received_at = '2027-01-01 00:00:00.000000'",
        "DELETE FROM ingest_connections",
    )
    assert agree(archive) == []


def test_a_running_run_is_not_checked(archive: Path) -> None:
    n = link_of(archive, "runs", 1)
    execute(archive, "UPDATE ingest_runs SET outcome = 'running' WHERE id = 1")
    assert agree(archive) == [f"run record 1 is missing: link {n} sealed it, no row has it"]


def test_an_altered_link(archive: Path) -> None:
    execute(archive, "UPDATE chain_links SET created_at = '2026-01-01 00:00:00.000000' WHERE n = 2")
    (problem,) = agree(archive)
    assert problem.startswith("link 2 was altered: it hashes to ")


def test_a_deleted_link(archive: Path) -> None:
    n = link_of(archive, "runs", 1)
    execute(archive, f"DELETE FROM chain_links WHERE n = {n}")
    found = agree(archive)
    assert found[0] == f"link {n} is missing (the next stored is {n + 1})"
    # The next link names the deleted one's hash, which no stored link has.
    before = str(value(archive, f"SELECT hash FROM chain_links WHERE n = {n - 1}"))
    assert found[1].startswith(f"link {n + 1} names ")
    assert found[1].endswith(
        f" as its predecessor, but the one stored before it, link {n - 1}, hashes to "
        f"{before[:16]}..."
    )
    assert found[2:] == [
        "run record 1 is in no link: it was written outside ingest (or the archive predates "
        "the chain: run `grantex-archive seal`)"
    ]


def test_a_deleted_link_of_many_rows(archive: Path) -> None:
    """More differences than the product lists: the ones it lists are among ours, the count
    is the same."""
    count = value(archive, "SELECT count FROM chain_links WHERE n = 1")
    assert isinstance(count, int) and count > 100
    execute(archive, "DELETE FROM chain_links WHERE n = 1")
    found = agree(archive)
    prev = str(value(archive, "SELECT prev FROM chain_links WHERE n = 2"))
    assert found[:2] == [
        "link 1 is missing (the next stored is 2)",
        f"link 2 names {prev[:16]}... as its predecessor, but the one stored before it, "
        "the chain's start (genesis), hashes to 0000000000000000...",
    ]
    assert len(found) == 2 + count


def delete_newest_links(path: Path, count: int) -> tuple[int, str]:
    """Delete the newest ``count`` links and every row they seal, leaving the chain head
    alone; the number and hash of the link now newest."""
    links = fetch(path, "SELECT n, kind, keys FROM chain_links ORDER BY n DESC LIMIT ?", count)
    statements = [f"DELETE FROM chain_links WHERE n >= {min(int(str(n)) for n, _, _ in links)}"]
    for _, kind, keys in links:
        table, key = iv.TABLES[str(kind)], iv.FIELDS[str(kind)][0]
        listed = ", ".join(map(str, iv.decode_keys(str(keys))))
        statements.append(f"DELETE FROM {table} WHERE {key} IN ({listed})")
    execute(path, *statements)
    n, digest = fetch(path, "SELECT n, hash FROM chain_links ORDER BY n DESC LIMIT 1")[0]
    return int(str(n)), str(digest)


def test_the_newest_links_deleted_with_their_rows(archive: Path) -> None:
    """Links that agree among themselves, but the head still names the newest one deleted."""
    head_n, head_hash = fetch(archive, "SELECT n, hash FROM chain_head")[0]
    assert fetch(archive, "SELECT kind FROM chain_links ORDER BY n DESC LIMIT 2") == [
        ("rejected",),
        ("runs",),
    ]
    n, digest = delete_newest_links(archive, 2)
    assert n == int(str(head_n)) - 2
    assert agree(archive) == [
        f"the chain head names link {head_n} ({str(head_hash)[:16]}...), but the newest "
        f"stored link is {n} ({digest[:16]}...)"
    ]


def test_the_newest_links_deleted_and_the_head_set_back(archive: Path) -> None:
    """The limit docs/integrity.md states: whoever deletes the newest links with their rows
    and sets the head back to the link now newest goes unnoticed by both verifiers."""
    n, digest = delete_newest_links(archive, 2)
    execute(archive, f"UPDATE chain_head SET n = {n}, hash = '{digest}'")
    assert agree(archive) == []


def test_a_changed_head(archive: Path) -> None:
    n, digest = fetch(archive, "SELECT n, hash FROM chain_head")[0]
    execute(archive, "UPDATE chain_head SET n = n + 1")
    assert agree(archive) == [
        f"the chain head names link {int(str(n)) + 1} ({str(digest)[:16]}...), but the newest "
        f"stored link is {n} ({str(digest)[:16]}...)"
    ]


def test_a_consistent_rewrite_is_not_caught_by_the_chain_alone(archive: Path) -> None:
    """The limit docs/integrity.md states: whoever recomputes every link from the changed
    one to the head goes unnoticed by both verifiers (the digest files are for that)."""
    execute(archive, "UPDATE ingest_runs SET error = 'rewritten' WHERE id = 1")
    db = sqlite3.connect(archive)
    try:
        with db:
            columns = ", ".join(iv.FIELDS["runs"])
            run = db.execute(f"SELECT {columns} FROM ingest_runs WHERE id = 1").fetchone()
            sealed = link_of(archive, "runs", 1)
            links = db.execute(
                "SELECT n, kind, prev, keys, count, digests, created_at FROM chain_links "
                "WHERE n >= ? ORDER BY n",
                (sealed,),
            ).fetchall()
            prev = db.execute("SELECT prev FROM chain_links WHERE n = ?", (sealed,)).fetchone()[0]
            for n, kind, _prev, keys, count, digests, created_at in links:
                if n == sealed:
                    digests = iv.row_digest("runs", run)
                digest = iv.link_hash(n, kind, prev, keys, count, digests, created_at)
                db.execute(
                    "UPDATE chain_links SET prev = ?, digests = ?, hash = ? WHERE n = ?",
                    (prev, digests, digest, n),
                )
                prev = digest
            db.execute("UPDATE chain_head SET hash = ?", (prev,))
    finally:
        db.close()
    assert agree(archive) == []


# -- the canonical forms, against the product's ------------------------------------


def test_the_worked_example() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert EXAMPLE_DIGEST in doc and EXAMPLE_LINK_HASH in doc
    for field in EXAMPLE_ROW[1:]:
        if field is not None:
            assert str(field).replace('"', "") in doc.replace('"', "").replace("\\", "")
    theirs = canonical.event_digest(*EXAMPLE_ROW)
    assert theirs == canonical.row_digest("events", EXAMPLE_ROW)
    assert theirs.hex() == iv.row_digest("events", EXAMPLE_ROW).hex() == EXAMPLE_DIGEST
    form = iv.row_form("events", EXAMPLE_ROW)
    assert _escaped(form) in doc and f"Its canonical form, {len(form)} bytes" in doc
    link = canonical.Link(
        n=1, kind="events", prev=canonical.GENESIS, keys="42", count=1,
        digests=theirs, created_at=EXAMPLE_LINK_CREATED,
    )  # fmt: skip
    form = iv.link_form(1, "events", iv.GENESIS, "42", 1, theirs, EXAMPLE_LINK_CREATED)
    assert link.canonical() == form
    assert _escaped(form) in doc
    assert link.hash() == hashlib.sha256(form).hexdigest() == EXAMPLE_LINK_HASH


def test_the_documented_snippet_prints_the_worked_example() -> None:
    (snippet,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    printed = subprocess.run(
        [sys.executable, "-I", "-c", snippet], check=True, capture_output=True, text=True
    ).stdout
    assert printed.split() == [EXAMPLE_DIGEST, EXAMPLE_LINK_HASH]


def _escaped(data: bytes) -> str:
    """Bytes as docs/integrity.md shows them: printable ASCII as itself, others as ``\\xNN``."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in data)


@pytest.mark.parametrize("text", ["", "plain", "café", "☃ snow", "a,b:c\n"])
def test_netstrings_count_utf8_bytes(text: str) -> None:
    assert canonical.netstring(text) == iv.netstring(text.encode("utf-8"))
    assert iv.netstring(text.encode("utf-8")).startswith(f"{len(text.encode())}:".encode())


def test_null_and_the_empty_string_differ() -> None:
    row = (7, "default", "2026-03-01 09:30:00.000000", "not JSON", "data: x", 7, None, None, None)
    empty = (*row[:-1], "")
    assert canonical.row_digest("rejected", row) == iv.row_digest("rejected", row)
    assert canonical.row_digest("rejected", empty) == iv.row_digest("rejected", empty)
    assert iv.row_form("rejected", row).endswith(b"1:7,~~~")
    assert iv.row_form("rejected", empty).endswith(b"1:7,~~0:,")
    assert canonical.row_digest("rejected", empty) != canonical.row_digest("rejected", row)
    # The same for an event's derived columns, through the product's fast path.
    event = (*EXAMPLE_ROW[:13], "", *EXAMPLE_ROW[14:])
    assert canonical.event_digest(*event) == iv.row_digest("events", event)
    assert canonical.event_digest(*event) != canonical.event_digest(*EXAMPLE_ROW)


@pytest.mark.parametrize(
    ("number", "bits"),
    [
        (80.0, "4054000000000000"),
        (20.0, "4034000000000000"),
        (0.5, "3fe0000000000000"),
        (0.0, "0000000000000000"),
        (-0.0, "8000000000000000"),
        (0.1, "3fb999999999999a"),
    ],
)
def test_floats_are_their_binary64_bits(number: float, bits: str) -> None:
    event = (*EXAMPLE_ROW[:14], number, *EXAMPLE_ROW[15:])
    assert iv.field_form("percentage", number) == f"16:{bits},".encode()
    assert f"16:{bits},".encode() in iv.row_form("events", event)
    assert canonical.event_digest(*event) == iv.row_digest("events", event)
    assert canonical.row_digest("events", event) == iv.row_digest("events", event)


def test_the_documented_float_forms() -> None:
    """Each float docs/integrity.md writes out (`80.0` is `4054...`, `-0.0` (`8000...`))."""
    doc = DOC.read_text(encoding="utf-8")
    pairs = re.findall(r"`(-?[0-9.]+)`\s+(?:is\s+|\()`([0-9a-f]{16})`", doc)
    assert len(pairs) >= 5
    for number, bits in pairs:
        assert canonical.text(float(number)) == iv.canonical_text(float(number)) == bits


def test_naive_and_aware_times_are_equal() -> None:
    naive = datetime(2026, 3, 1, 9, 30, 0, 250000)
    aware = naive.replace(tzinfo=timezone.utc)
    paris = aware.astimezone(timezone(timedelta(hours=1)))
    forms = {
        canonical.timestamp(naive),
        canonical.timestamp(aware),
        canonical.timestamp(paris),
        canonical.timestamp("2026-03-01 09:30:00.250000"),
        iv.canonical_time("2026-03-01 09:30:00.250000"),
        iv.canonical_time("2026-03-01T10:30:00.25+01:00"),
    }
    assert forms == {"2026-03-01T09:30:00.250000Z"}


def test_integers_are_decimal_and_runs_hash_alike() -> None:
    run = (3, "default", "2026-03-01 09:00:00.000000", "2026-03-01 09:05:00.000000", None,
           "grant.revoked", "http://127.0.0.1:1", 10, 9, 1, 0, 0, None, None, "failed", -1,
           "boom")  # fmt: skip
    assert canonical.row_digest("runs", run) == iv.row_digest("runs", run)
    assert b"2:-1," in iv.row_form("runs", run)


@pytest.mark.parametrize(
    "keys", [[], [5], [1, 2, 3], [1, 2, 3, 5], [1, 3, 5, 6, 7, 10], [2000, 2001, 4000]]
)
def test_key_ranges(keys: list[int]) -> None:
    encoded = canonical.encode_keys(keys)
    assert encoded == iv.encode_keys(keys)
    assert iv.decode_keys(encoded) == list(canonical.decode_keys(encoded)) == keys


def test_an_archive_sealed_after_the_fact(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive from before revision 0007: its rows are in no link until `seal`, which
    links them top down, a chunk per link; both verifiers then accept it, and still catch
    an edit."""
    url = f"sqlite:///{archive}"
    assert invoke(["db", "downgrade", "0006", "--yes", "--db", url]).exit_code == 0
    assert invoke(["db", "upgrade", "--db", url]).exit_code == 0
    before = agree(archive)
    assert len(before) == 2000 + 3 + 1
    assert all(" is in no link: " in problem for problem in before)
    monkeypatch.setattr("ingest.seal.archive.SEAL_CHUNK", 300)
    result = invoke(["seal", "--db", url])
    assert result.exit_code == 0, result.output
    assert "sealed 2,000 events, 3 rejected frames, 1 run records" in result.stdout
    assert agree(archive) == []
    firsts = [
        iv.decode_keys(str(keys))[0]
        for (keys,) in fetch(
            archive, "SELECT keys FROM chain_links WHERE kind = 'events' ORDER BY n"
        )
    ]
    assert firsts == sorted(firsts, reverse=True) and len(firsts) == 7
    n = link_of(archive, "events", 1234)
    name = event_name(archive, 1234)
    execute(
        archive, "UPDATE events SET received_at = '2027-01-01 00:00:00.000000' WHERE seq = 1234"
    )
    assert agree(archive) == [f"event {name} was changed after link {n} sealed it"]
