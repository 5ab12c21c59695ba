"""Verifying a window of the chain: the links written in [since, until), and their rows.

The model is CloudTrail's ``validate-logs --start-time --end-time``: check the part
of the chain written in a window, reading the rows and digests of the window only
(every link's number, time and key list are still read to find the window and the
links around it). What a windowed pass checks
(docs/integrity.md, "Verifying a window"):

- the links between the last link written before ``since`` and the first written
  at or after ``until``: numbered one after another, each hashing to what it
  stores and naming its predecessor's hash; the link before the window is
  recomputed too (the first window link must name its hash), and so is the link
  after it (it must name the last window link's hash, so that links deleted at the
  window's end, or the whole window, show); with no ``until``, the chain head must
  name the newest link;
- every row a window link holds: present, with the digest the link holds;
- the rows of each kind whose key lies in the window's key range (from the lowest
  to the highest key its links hold; open-ended on a side with no bound) that no
  link holds: rows inserted by hand among the window's rows. Rows in that range
  held by links outside the window are compared with those links;
- with a digest directory, the digest files written in the window, chained from
  the one before it.

It does not see rows or links outside the window: an edit of a row sealed before
``since`` passes, as does a row inserted with a key outside the window's range.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..schema import chain_links
from .archive import (
    LINKS_PER_QUERY,
    LINKS_STREAMED,
    Progress,
    Verdict,
    _link,
    _no_progress,
    read_head,
    snapshot,
)
from .canonical import Link, decode_keys, encode_keys, event_digest, row_digest, timestamp
from .chain import TABLES, select_rows
from .digests import INTERVAL, check_digest_files, read_digest_files
from .verify import Problem, Row, check_links, check_mapped, check_rows

INFINITY = 2**63
"""Above every key: the top of an open-ended window's key range."""


@dataclass
class WindowVerdict(Verdict):
    """A :class:`Verdict` for the links written in [since, until)."""

    since: datetime | None = None
    until: datetime | None = None
    first: int | None = None  # the first and last link in the window (None: no link)
    last: int | None = None


def verify_window(
    engine: Engine,
    since: datetime | None,
    until: datetime | None,
    progress: Progress = _no_progress,
    keep: int = 100,
    digest_dir: Path | None = None,
    public_key: Any = None,
) -> WindowVerdict:
    """Verify the part of the chain written in [since, until) (see the module's docstring)."""
    # In UTC: SQLite stores a link's time as naive UTC text, and compares it as text.
    since, until = (None if t is None else t.astimezone(timezone.utc) for t in (since, until))
    verdict = WindowVerdict(keep=keep, since=since, until=until)
    with snapshot(engine) as conn:
        before, after = _bounds(conn, since, until)
        verdict.note(_check_window_links(conn, verdict, before, after))
        for kind in TABLES:
            verdict.note(_check_kind(conn, verdict, kind, (before, after), progress))
        if digest_dir is not None:
            verdict.note(_check_digests(conn, verdict, digest_dir, public_key))
    return verdict


def _bounds(
    conn: Connection, since: datetime | None, until: datetime | None
) -> tuple[int, int | None]:
    """The number of the last link written before ``since`` (0: none) and of the first
    written at or after ``until`` (None: none, or no ``until``)."""
    n, created = chain_links.c.n, chain_links.c.created_at
    before = 0
    if since is not None:
        query = sa.select(sa.func.max(n)).where(created < since)
        before = int(conn.execute(query).scalar() or 0)
    after = None
    if until is not None:
        found = conn.execute(sa.select(sa.func.min(n)).where(created >= until)).scalar()
        after = None if found is None else max(int(found), before + 1)
    return before, after


def _in_window(before: int, after: int | None) -> Any:
    condition = chain_links.c.n > before
    return condition if after is None else sa.and_(condition, chain_links.c.n < after)


def _one_link(conn: Connection, n: int) -> tuple[Link, str] | None:
    row = conn.execute(sa.select(chain_links).where(chain_links.c.n == n)).first()
    return None if row is None else _link(row)


def _check_window_links(
    conn: Connection, verdict: WindowVerdict, before: int, after: int | None
) -> Iterator[Problem]:
    """The window's links, from the one before it (recomputed) to the one after it."""
    start = (0, "0" * 64)
    if before:
        found = _one_link(conn, before)
        if found is not None:
            link, stored = found
            start = (link.n, stored)
            if link.hash() != stored:
                yield Problem("link", f"link {link.n}, the last before the window, was altered: "
                              f"it hashes to {link.hash()[:16]}..., not the {stored[:16]}... "
                              "stored with it")  # fmt: skip

    def links() -> Iterator[tuple[Link, str]]:
        streamed = conn.execution_options(stream_results=True, yield_per=LINKS_STREAMED)
        query = sa.select(chain_links).where(_in_window(before, after)).order_by(chain_links.c.n)
        for row in streamed.execute(query):
            link, stored = _link(row)
            verdict.first = link.n if verdict.first is None else verdict.first
            verdict.last = link.n
            verdict.links += 1
            yield link, stored
        if after is not None:
            following = _one_link(conn, after)
            if following is not None:
                yield following

    head = read_head(conn) if after is None else None
    yield from check_links(links(), head, start)


def _ends(keys: str) -> tuple[int, int]:
    """The first and last key of a key list, without expanding it."""
    first = keys.split(",", 1)[0].split("-", 1)[0]
    last = keys.rsplit(",", 1)[-1].rsplit("-", 1)[-1]
    return int(first or 0), int(last or 0)


def _check_kind(
    conn: Connection,
    verdict: WindowVerdict,
    kind: str,
    bounds: tuple[int, int | None],
    progress: Progress,
) -> Iterator[Problem]:
    """The rows of ``kind`` in the window's key range against the links that hold them."""
    before, after = bounds
    query = sa.select(chain_links.c.n, chain_links.c["keys"]).where(chain_links.c.kind == kind)
    inside: list[tuple[int, int, int]] = []  # (first key, last key, n)
    outside: list[tuple[int, int, int]] = []
    for n, keys in conn.execute(query):
        span = _ends(str(keys))
        in_window = n > before and (after is None or n < after)
        (inside if in_window else outside).append((*span, int(n)))
    if inside:
        low = 0 if before == 0 else min(first for first, _, _ in inside)
        high = INFINITY if after is None else max(last for _, last, _ in inside)
    elif after is None:
        # Nothing of this kind sealed in an open-ended window: rows above every sealed key
        # were written in it.
        low, high = max((last for _, last, _ in outside), default=0) + 1, INFINITY
    else:
        return
    overlapping = [entry for entry in outside if entry[1] >= low and entry[0] <= high]
    ordered = sorted(inside + overlapping)
    trim = {n for _, _, n in overlapping}
    links = _links_in_order(conn, [n for _, _, n in ordered], trim, (low, high))
    rows = _rows_between(conn, verdict, kind, (low, high), progress)
    check = check_mapped if kind == "runs" else check_rows
    yield from check(kind, links, rows)


def _links_in_order(
    conn: Connection, ns: list[int], trim: set[int], span: tuple[int, int]
) -> Iterator[Link]:
    """The links ``ns`` in that order, a batch per query; those in ``trim`` cut to ``span``."""
    for start in range(0, len(ns), LINKS_PER_QUERY):
        wanted = ns[start : start + LINKS_PER_QUERY]
        query = sa.select(chain_links).where(chain_links.c.n.in_(wanted))
        fetched = {link.n: link for link, _ in map(_link, conn.execute(query))}
        for n in wanted:
            if n in fetched:
                yield _cut(fetched[n], span) if n in trim else fetched[n]


def _cut(link: Link, span: tuple[int, int]) -> Link:
    """The part of a link outside the window that holds keys in the window's key range."""
    low, high = span
    kept = [
        (key, digest)
        for key, digest in zip(decode_keys(link.keys), link.row_digests(), strict=False)
        if low <= key <= high
    ]
    return Link(
        n=link.n,
        kind=link.kind,
        prev=link.prev,
        keys=encode_keys(key for key, _ in kept),
        count=len(kept),
        digests=b"".join(digest for _, digest in kept),
        created_at=link.created_at,
    )


def _rows_between(
    conn: Connection, verdict: WindowVerdict, kind: str, span: tuple[int, int], progress: Progress
) -> Iterator[Row]:
    """The rows of a kind whose key is in ``span`` (runs: the final ones), by key."""
    key = TABLES[kind][1]
    where = f"{key} >= {int(span[0])}" + (f" AND {key} <= {span[1]}" if span[1] < INFINITY else "")
    if kind == "runs":
        where += " AND outcome <> 'running'"
    streamed = conn.execution_options(stream_results=True, yield_per=10_000)
    count = 0
    for values in streamed.exec_driver_sql(select_rows(kind, where)):
        count += 1
        if count % 100_000 == 0:
            progress(kind, count)
        if kind == "events":
            yield Row(int(values[0]), event_digest(*values), f"seq {values[0]} (id {values[1]})")
        else:
            yield Row(int(values[0]), row_digest(kind, values), f"{values[0]}")
    verdict.rows[kind] = count
    progress(kind, count)


# -- digest files ----------------------------------------------------------------


def _document_time(data: bytes) -> datetime | None:
    """When a digest file says it was written (None: not a digest file)."""
    try:
        at = str(json.loads(data)["created_at"])
        return datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(timezone.utc)
    except (ValueError, KeyError, TypeError):
        return None


def _check_digests(
    conn: Connection, verdict: WindowVerdict, directory: Path, public_key: Any
) -> Iterator[Problem]:
    """The digest files written in the window, chained from the one before it; and the
    window's links covered by some digest file."""
    files = read_digest_files(directory)
    since, until = verdict.since, verdict.until
    chosen: list[tuple[str, bytes]] = []
    before: tuple[str, bytes] | None = None
    for name, data in files:
        at = _document_time(data)
        if since is not None and at is not None and at < since:
            before = (name, data)
        elif until is None or at is None or at < until:
            chosen.append((name, data))

    def link_hash(n: int) -> str | None:
        found = conn.execute(sa.select(chain_links.c.hash).where(chain_links.c.n == n)).scalar()
        return None if found is None else str(found)

    yield from check_digest_files(chosen, link_hash, public_key, before)
    yield from _uncovered(conn, verdict, files, directory)


def _uncovered(
    conn: Connection, verdict: WindowVerdict, files: list[tuple[str, bytes]], directory: Path
) -> Iterable[Problem]:
    """Window links long after the newest digest file: files missing, or commands that ran
    without --digest-dir."""
    if verdict.last is None:
        return []
    if not files:
        return [Problem("digest", f"no digest file in {directory}")]
    try:
        covered = max(int(json.loads(data)["head"]["n"]) for _, data in files)
    except (ValueError, KeyError, TypeError):
        return []  # named as not a digest file
    newest = _document_time(files[-1][1])
    query = sa.select(sa.func.max(chain_links.c.created_at)).where(
        chain_links.c.n > covered, chain_links.c.n <= verdict.last
    )
    last = conn.execute(query).scalar()
    if last is None or newest is None:
        return []
    at = timestamp(last)
    if datetime.fromisoformat(at.replace("Z", "+00:00")) - newest <= timedelta(
        seconds=2 * INTERVAL
    ):
        return []
    return [
        Problem(
            "digest",
            f"links {covered + 1} to {verdict.last} (up to {at}) are in no digest file; the "
            f"newest, {files[-1][0]}, is from {timestamp(newest)}: digest files are missing, "
            "or commands ran without --digest-dir",
        )
    ]
