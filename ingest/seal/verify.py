"""Checking the chain: the links among themselves, then every row against its link. Pure.

The checks take links and rows as iterables (the database side streams
them, see :mod:`ingest.seal.archive`) and yield :class:`Problem` s, the
first of which names the first difference. Memory stays bounded: the rows
of ``events`` and ``rejected_events`` are compared with the links in one
merge by key (one link's digests held at a time); final runs, a few per
cron run, are looked up in a map.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .canonical import GENESIS, KINDS, Link, decode_keys

LABELS = {"events": "event", "rejected": "rejected frame", "runs": "run record"}


@dataclass(frozen=True, slots=True)
class Problem:
    """One way the archive differs from its chain, said precisely."""

    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


class Row(NamedTuple):
    """A stored row as the verifier sees it: its key, its digest, how to name it (a named
    tuple: one is made per stored row, and a frozen dataclass costs several times more)."""

    key: int
    digest: bytes
    name: str


def check_links(
    links: Iterable[tuple[Link, str]],
    head: tuple[int, str] | None = None,
    start: tuple[int, str] = (0, GENESIS),
) -> Iterator[Problem]:
    """The links ``(link, stored hash)`` in order of ``n``: numbered 1, 2, ... without a
    hole, each naming its predecessor's hash, each hashing to what it stores; and the
    chain head ``(n, hash)``, when given, naming the newest of them.

    ``start`` is the link ``(n, stored hash)`` just before the first given (a window of
    the chain, see :mod:`ingest.seal.window`); by default the chain's start."""
    prev_n, prev_hash = start
    expected_n = prev_n + 1
    for link, stored in links:
        if link.n != expected_n:
            yield Problem("link", f"link {expected_n} is missing (the next stored is {link.n})")
            expected_n = link.n
        if link.kind not in KINDS:
            yield Problem("link", f"link {link.n} has an unknown kind {link.kind!r}")
        if link.prev != prev_hash:
            before = f"link {prev_n}" if prev_n else "the chain's start (genesis)"
            yield Problem(
                "link",
                f"link {link.n} names {link.prev[:16]}... as its predecessor, but the one "
                f"stored before it, {before}, hashes to {prev_hash[:16]}...",
            )
        if len(link.digests) != 32 * link.count:
            yield Problem("link", f"link {link.n} holds {len(link.digests) // 32} digests "
                          f"for {link.count} rows")  # fmt: skip
        actual = link.hash()
        if actual != stored:
            yield Problem("link", f"link {link.n} was altered: it hashes to {actual[:16]}..., "
                          f"not the {stored[:16]}... stored with it")  # fmt: skip
        prev_hash = stored
        prev_n = link.n
        expected_n += 1
    if head is not None and head != (prev_n, prev_hash):
        yield Problem(
            "link",
            f"the chain head names link {head[0]} ({head[1][:16]}...), but the newest "
            f"stored link is {prev_n} ({prev_hash[:16]}...)",
        )


def check_rows(kind: str, links: Iterable[Link], rows: Iterable[Row]) -> Iterator[Problem]:
    """Merge the rows (ascending keys) with the links of ``kind`` (ascending first keys):
    every row in exactly one link, with the digest the link holds for it."""
    label = LABELS[kind]
    stream = iter(rows)
    row = next(stream, None)
    last_key = 0
    for link in links:
        digests = link.row_digests()
        for key, expected in zip(decode_keys(link.keys), digests, strict=False):
            if key <= last_key:
                yield Problem("link", f"link {link.n} seals {label} {key} a second time")
                continue
            last_key = key
            while row is not None and row.key < key:
                yield _unsealed(kind, row)
                row = next(stream, None)
            if row is None or row.key > key:
                yield Problem(
                    "missing", f"{label} {key} is missing: link {link.n} sealed it, no row has it"
                )
                continue
            if row.digest != expected:
                yield _changed(kind, row, link.n)
            row = next(stream, None)
    while row is not None:
        yield _unsealed(kind, row)
        row = next(stream, None)


def check_mapped(kind: str, links: Iterable[Link], rows: Iterable[Row]) -> Iterator[Problem]:
    """As :func:`check_rows`, for a kind whose links may interleave (run records: each
    sealed when it becomes final, in any order): the links' digests in a map."""
    label = LABELS[kind]
    sealed: dict[int, tuple[int, bytes]] = {}
    for link in links:
        for key, digest in zip(decode_keys(link.keys), link.row_digests(), strict=False):
            if key in sealed:
                yield Problem("link", f"link {link.n} seals {label} {key} a second time")
                continue
            sealed[key] = (link.n, digest)
    for row in rows:
        entry = sealed.pop(row.key, None)
        if entry is None:
            yield _unsealed(kind, row)
        elif entry[1] != row.digest:
            yield _changed(kind, row, entry[0])
    for key, (n, _) in sorted(sealed.items()):
        yield Problem("missing", f"{label} {key} is missing: link {n} sealed it, no row has it")


def _unsealed(kind: str, row: Row) -> Problem:
    return Problem(
        "unsealed",
        f"{LABELS[kind]} {row.name} is in no link: it was written outside ingest (or the "
        "archive predates the chain: run `grantex-archive seal`)",
    )


def _changed(kind: str, row: Row, n: int) -> Problem:
    return Problem("changed", f"{LABELS[kind]} {row.name} was changed after link {n} sealed it")
