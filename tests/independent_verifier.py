"""A second verifier of a SQLite archive's hash chain, written from docs/integrity.md alone.

It uses only the standard library (``sqlite3``, ``hashlib``, ``struct``, ``datetime``) and
none of the product's code, so that the tests can show the document is enough
to re-implement verification: wherever this module and ``grantex-archive
verify-archive`` disagree, either the product or the document is wrong.

Run it on a file: ``python tests/independent_verifier.py archive.db``. It
prints one line per difference, in the wording of docs/integrity.md, and
exits 1 when there is any.
"""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

LINK_FORMAT = "grantex-archive/link/v1"
GENESIS = "0" * 64
NULL = b"~"  # a NULL field: no netstring, since a netstring starts with a digit

# Per kind: the table, the row's tag, the sealed columns in order (the first is the key),
# which rows are sealed, and how a row is named in a message.
TABLES = {"events": "events", "rejected": "rejected_events", "runs": "ingest_runs"}
TAGS = {"events": "event", "rejected": "rejected", "runs": "run"}
LABELS = {"events": "event", "rejected": "rejected frame", "runs": "run record"}
FIELDS = {
    "events": ("seq", "id", "source", "type", "occurred_at", "received_at", "channel",
               "payload", "grant_id", "agent_id", "principal_id", "revoked_by", "token_id",
               "method", "percentage", "remaining", "initial"),
    "rejected": ("id", "source", "received_at", "reason", "raw", "raw_length", "event_id",
                 "run_id", "raw_sha256"),
    "runs": ("id", "source", "started_at", "finished_at", "since_requested", "types",
             "base_url", "received", "inserted", "duplicates", "rejected", "reconnects",
             "first_occurred_at", "last_occurred_at", "outcome", "exit_code", "error"),
}  # fmt: skip
WHERE = {"events": "1 = 1", "rejected": "1 = 1", "runs": "outcome <> 'running'"}
TIMES = frozenset(
    ("occurred_at", "received_at", "started_at", "finished_at", "since_requested",
     "first_occurred_at", "last_occurred_at", "created_at")
)  # fmt: skip


def netstring(data: bytes) -> bytes:
    """``<length in decimal>:<bytes>,``: the length counts bytes, not characters."""
    return str(len(data)).encode("ascii") + b":" + data + b","


def canonical_time(value: str) -> str:
    """A stored time as ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` in UTC (no offset stored means UTC)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_text(value: object) -> str:
    """An integer is its decimal digits, text is itself, a float the 16 lowercase hex digits
    of its IEEE 754 binary64 bits, big-endian."""
    if isinstance(value, float):
        return struct.pack(">d", value).hex()
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"no canonical form for {value!r}")
    return str(value)


def field_form(name: str, value: object) -> bytes:
    """One field's bytes in a row's canonical form: ``~`` for NULL, else a netstring."""
    if value is None:
        return NULL
    form = canonical_time(value) if name in TIMES else canonical_text(value)  # type: ignore[arg-type]
    return netstring(form.encode("utf-8"))


def row_form(kind: str, values: Sequence[object]) -> bytes:
    """A row's canonical bytes: its tag's netstring, then each sealed column's form."""
    fields = zip(FIELDS[kind], values, strict=True)
    return netstring(TAGS[kind].encode()) + b"".join(field_form(n, v) for n, v in fields)


def row_digest(kind: str, values: Sequence[object]) -> bytes:
    return hashlib.sha256(row_form(kind, values)).digest()


def encode_keys(keys: Sequence[int]) -> str:
    """Ascending keys as runs of consecutive keys: ``1-3,5``."""
    spans: list[list[int]] = []
    for key in keys:
        if spans and key == spans[-1][1] + 1:
            spans[-1][1] = key
        else:
            spans.append([key, key])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def decode_keys(text: str) -> list[int]:
    keys: list[int] = []
    for part in text.split(",") if text else []:
        first, _, last = part.partition("-")
        keys.extend(range(int(first), int(last or first) + 1))
    return keys


def link_form(
    n: int, kind: str, prev: str, keys: str, count: int, digests: bytes, created_at: str
) -> bytes:
    """A link's canonical bytes: eight netstrings, the digests as raw bytes."""
    fields = (
        LINK_FORMAT.encode(),
        str(n).encode(),
        kind.encode(),
        prev.encode(),
        keys.encode(),
        str(count).encode(),
        digests,
        canonical_time(created_at).encode(),
    )
    return b"".join(netstring(field) for field in fields)


def link_hash(
    n: int, kind: str, prev: str, keys: str, count: int, digests: bytes, created_at: str
) -> str:
    return hashlib.sha256(link_form(n, kind, prev, keys, count, digests, created_at)).hexdigest()


def verify(path: str | Path) -> list[str]:
    """Every difference between a SQLite archive and its chain (empty: it verifies)."""
    problems: list[str] = []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        links = db.execute(
            "SELECT n, kind, prev, keys, count, digests, created_at, hash FROM chain_links "
            "ORDER BY n"
        ).fetchall()
        head = db.execute("SELECT n, hash FROM chain_head").fetchone()
        problems += _check_links(links, head)
        for kind in TABLES:
            problems += _check_rows(db, kind, [link for link in links if link[1] == kind])
    finally:
        db.close()
    return problems


def _check_links(links: list[tuple[object, ...]], head: tuple[int, str]) -> list[str]:
    problems: list[str] = []
    expected, prev_n, prev_hash = 1, 0, GENESIS
    for n, kind, prev, keys, count, digests, created_at, stored in links:
        assert isinstance(n, int) and isinstance(count, int)
        assert isinstance(kind, str) and isinstance(prev, str) and isinstance(keys, str)
        assert isinstance(digests, bytes) and isinstance(created_at, str)
        assert isinstance(stored, str)
        if n != expected:
            problems.append(f"link {expected} is missing (the next stored is {n})")
            expected = n
        if kind not in TABLES:
            problems.append(f"link {n} has an unknown kind {kind!r}")
        if prev != prev_hash:
            before = f"link {prev_n}" if prev_n else "the chain's start (genesis)"
            problems.append(
                f"link {n} names {prev[:16]}... as its predecessor, but the one stored "
                f"before it, {before}, hashes to {prev_hash[:16]}..."
            )
        if len(digests) != 32 * count:
            problems.append(f"link {n} holds {len(digests) // 32} digests for {count} rows")
        actual = link_hash(n, kind, prev, keys, count, digests, created_at)
        if actual != stored:
            problems.append(
                f"link {n} was altered: it hashes to {actual[:16]}..., "
                f"not the {stored[:16]}... stored with it"
            )
        prev_n, prev_hash = n, stored
        expected += 1
    head_n, head_hash = head
    if (head_n, head_hash) != (prev_n, prev_hash):
        problems.append(
            f"the chain head names link {head_n} ({head_hash[:16]}...), but the newest "
            f"stored link is {prev_n} ({prev_hash[:16]}...)"
        )
    return problems


def _check_rows(db: sqlite3.Connection, kind: str, links: list[tuple[object, ...]]) -> list[str]:
    label = LABELS[kind]
    problems: list[str] = []
    sealed: dict[int, tuple[int, bytes]] = {}
    for n, _kind, _prev, keys, _count, digests, *_ in sorted(
        links, key=lambda link: (decode_keys(str(link[3]))[:1], link[0])
    ):
        assert isinstance(n, int) and isinstance(digests, bytes)
        for i, key in enumerate(decode_keys(str(keys))):
            if key in sealed:
                problems.append(f"link {n} seals {label} {key} a second time")
                continue
            sealed[key] = (n, digests[32 * i : 32 * i + 32])
    columns = ", ".join(FIELDS[kind])
    query = f"SELECT {columns} FROM {TABLES[kind]} WHERE {WHERE[kind]} ORDER BY {FIELDS[kind][0]}"
    for values in db.execute(query):
        key = values[0]
        name = f"seq {key} (id {values[1]})" if kind == "events" else str(key)
        entry = sealed.pop(key, None)
        if entry is None:
            problems.append(
                f"{label} {name} is in no link: it was written outside ingest (or the archive "
                "predates the chain: run `grantex-archive seal`)"
            )
        elif entry[1] != row_digest(kind, values):
            problems.append(f"{label} {name} was changed after link {entry[0]} sealed it")
    for key, (n, _) in sorted(sealed.items()):
        problems.append(f"{label} {key} is missing: link {n} sealed it, no row has it")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: independent_verifier.py ARCHIVE.db", file=sys.stderr)
        return 2
    problems = verify(argv[0])
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{argv[0]}: verified")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
