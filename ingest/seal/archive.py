"""The chain in the database: sealing what predates it, and verifying it all.

:func:`seal_existing` seals, once, the rows an archive held before migration
``0007`` (the head records how far they go), a chunk per transaction from
the top down, so a killed run leaves a chain that verifies and the next run
goes on from where it stopped. :func:`verify_archive` streams the links and
every sealed table through the checks of :mod:`ingest.seal.verify`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..schema import chain_head, chain_links, ingest_runs
from .canonical import FIELDS, Link, decode_keys, event_digest, row_digest, timestamp
from .chain import TABLES, Sealer, digests_of, select_rows
from .digests import INTERVAL, check_digest_files, read_digest_files
from .verify import Problem, Row, check_links, check_mapped, check_rows

SEAL_CHUNK = 10_000
"""Rows per link (and per transaction) when sealing what predates the chain."""

LINKS_PER_QUERY = 200
"""Links whose digests one query fetches while verifying."""

ROWS_PER_QUERY = 20_000
"""Rows whose digests one query fetches while verifying (32 bytes each)."""

LINKS_STREAMED = 16
"""Links held at once while the chain is read in order: a link sealed by ``seal`` carries
10,000 digests (320 kB), so a batch stays within a few megabytes."""

UNSEALED = {"events": "unsealed_events", "rejected": "unsealed_rejected", "runs": "unsealed_runs"}

Progress = Callable[[str, int], None]
"""Called with a table's kind and how many of its rows were handled so far."""


def _no_progress(kind: str, done: int) -> None:
    return None


# -- sealing what predates the chain ---------------------------------------------


def seal_existing(engine: Engine, progress: Progress = _no_progress) -> dict[str, int]:
    """Seal the rows written before the chain; how many of each kind. Safe to repeat."""
    sealed = {kind: 0 for kind in UNSEALED}
    for kind in ("events", "rejected"):
        while True:
            with engine.begin() as conn:
                done = _seal_chunk(conn, kind)
            if done is None:
                break
            sealed[kind] += done
            progress(kind, sealed[kind])
    with engine.begin() as conn:
        sealed["runs"] = _seal_final_runs(conn)
    progress("runs", sealed["runs"])
    return sealed


def _seal_chunk(conn: Connection, kind: str) -> int | None:
    """Seal the top chunk of the rows below the head's mark; None when none is left."""
    sealer = Sealer(conn)
    column = chain_head.c[UNSEALED[kind]]
    upto = int(conn.execute(sa.select(column)).scalar_one())
    if upto <= 0:
        return None
    low = max(upto - SEAL_CHUNK, 0)
    key = TABLES[kind][1]
    rows = conn.exec_driver_sql(select_rows(kind, f"{key} > {low} AND {key} <= {upto}"))
    keys, digests = digests_of(kind, rows)
    sealer.append(kind, keys, digests)
    sealer.close()
    conn.execute(sa.update(chain_head).where(chain_head.c.id == 1).values({column: low}))
    return len(keys)


def _seal_final_runs(conn: Connection) -> int:
    """Seal the final run records that predate the chain and no link holds yet."""
    sealer = Sealer(conn)
    upto = int(conn.execute(sa.select(chain_head.c.unsealed_runs)).scalar_one())
    held: set[int] = set()
    for (keys,) in conn.execute(
        sa.select(chain_links.c["keys"]).where(chain_links.c.kind == "runs")
    ):
        held.update(decode_keys(keys))
    final = [
        run_id
        for (run_id,) in conn.execute(
            sa.select(ingest_runs.c.id).where(
                ingest_runs.c.id <= upto, ingest_runs.c.outcome != "running"
            )
        )
        if run_id not in held
    ]
    sealer.rows_with_keys("runs", final)
    sealer.close()
    conn.execute(sa.update(chain_head).where(chain_head.c.id == 1).values(unsealed_runs=0))
    return len(final)


# -- verifying -------------------------------------------------------------------


@dataclass
class Verdict:
    """What verification found: counts of what it read, and the problems (first first)."""

    links: int = 0
    rows: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind in TABLES})
    problems: list[Problem] = field(default_factory=list)
    more: int = 0  # problems past the ones kept
    keep: int = 100  # how many problems are listed

    @property
    def ok(self) -> bool:
        return not self.problems

    def note(self, problems: Iterable[Problem]) -> None:
        """List the problems, up to ``keep``; count the rest."""
        for problem in problems:
            if len(self.problems) < self.keep:
                self.problems.append(problem)
            else:
                self.more += 1


def verify_archive(
    engine: Engine,
    progress: Progress = _no_progress,
    keep: int = 100,
    digest_dir: Path | None = None,
    public_key: Any = None,
) -> Verdict:
    """Recompute the chain and every sealed row; at most ``keep`` problems are listed.

    With ``digest_dir``, the digest files there are checked too (against each other, the
    archive's links and, with ``public_key``, their signatures)."""
    verdict = Verdict(keep=keep)
    with snapshot(engine) as conn:
        head = read_head(conn)
        verdict.note(check_links(_counted(verdict, _all_links(conn)), head))
        for kind in TABLES:
            links = _links_by_first_key(conn, kind)
            rows = _rows(conn, kind, verdict, progress)
            check = check_mapped if kind == "runs" else check_rows
            verdict.note(check(kind, links, rows))
        if digest_dir is not None:
            verdict.note(_check_digests(conn, digest_dir, public_key))
    return verdict


@contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection reading one snapshot for the whole pass: rows and links a writer commits
    meanwhile are neither half seen (rows without their link) nor beyond the head read first."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        else:
            conn.exec_driver_sql("BEGIN")
        yield conn


def read_head(conn: Connection) -> tuple[int, str]:
    """The chain head: the number and hash of the newest link, as ``chain_head`` holds them."""
    head = conn.execute(sa.select(chain_head.c.n, chain_head.c.hash)).one()
    return int(head.n), str(head.hash)


def _check_digests(conn: Connection, directory: Path, public_key: Any) -> Iterator[Problem]:
    files = read_digest_files(directory)
    if not files:
        yield Problem("digest", f"no digest file in {directory}")
        return

    def link_hash(n: int) -> str | None:
        found = conn.execute(sa.select(chain_links.c.hash).where(chain_links.c.n == n)).scalar()
        return None if found is None else str(found)

    yield from check_digest_files(files, link_hash, public_key)
    # The newest files may have been removed: links long after the newest file say so.
    try:
        newest = json.loads(files[-1][1])
        covered = int(newest["head"]["n"])
        filed = datetime.fromisoformat(str(newest["created_at"]).replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return  # named as not a digest file above
    after = conn.execute(
        sa.select(sa.func.max(chain_links.c.n), sa.func.max(chain_links.c.created_at)).where(
            chain_links.c.n > covered
        )
    ).one()
    if after[0] is None:
        return
    last = timestamp(after[1])
    if datetime.fromisoformat(last.replace("Z", "+00:00")) - filed > timedelta(
        seconds=2 * INTERVAL
    ):
        yield Problem(
            "digest",
            f"links {covered + 1} to {after[0]} (up to {last}) are in no digest file; the "
            f"newest, {files[-1][0]}, is from {newest['created_at']}: digest files are "
            "missing, or commands ran without --digest-dir",
        )


def _counted(verdict: Verdict, links: Iterator[tuple[Link, str]]) -> Iterator[tuple[Link, str]]:
    for item in links:
        verdict.links += 1
        yield item


def _link(row: Any) -> tuple[Link, str]:
    # By name through the mapping: a Row is a tuple, whose count() would shadow the column.
    values = row._mapping
    link = Link(
        n=int(values["n"]),
        kind=str(values["kind"]),
        prev=str(values["prev"]),
        keys=str(values["keys"]),
        count=int(values["count"]),
        digests=bytes(values["digests"]),
        created_at=values["created_at"],
    )
    return link, str(values["hash"])


def _all_links(conn: Connection) -> Iterator[tuple[Link, str]]:
    streamed = conn.execution_options(stream_results=True, yield_per=LINKS_STREAMED)
    for row in streamed.execute(sa.select(chain_links).order_by(chain_links.c.n)):
        yield _link(row)


def _links_by_first_key(conn: Connection, kind: str) -> Iterator[Link]:
    """A kind's links in the order of their first key, a batch of links per query: at most
    :data:`LINKS_PER_QUERY` links, and no more rows than :data:`ROWS_PER_QUERY` (links
    written by `seal` hold :data:`SEAL_CHUNK` rows' digests each) unless one link has more."""
    order = sorted(
        (next(decode_keys(keys), 0), n, count)
        for n, keys, count in conn.execute(
            sa.select(chain_links.c.n, chain_links.c["keys"], chain_links.c["count"]).where(
                chain_links.c.kind == kind
            )
        )
    )
    batch: list[int] = []
    rows = 0
    for i, (_, n, count) in enumerate(order):
        batch.append(n)
        rows += count
        last = i + 1 == len(order)
        if last or len(batch) == LINKS_PER_QUERY or rows + order[i + 1][2] > ROWS_PER_QUERY:
            query = sa.select(chain_links).where(chain_links.c.n.in_(batch))
            fetched = {link.n: link for link, _ in map(_link, conn.execute(query))}
            yield from (fetched[n] for n in batch if n in fetched)
            batch, rows = [], 0


def _rows(conn: Connection, kind: str, verdict: Verdict, progress: Progress) -> Iterator[Row]:
    """Every row of a kind's table (runs: the final ones), ascending by key, as the verifier
    sees it."""
    where = "outcome <> 'running'" if kind == "runs" else "1 = 1"
    # The driver's own cursor, in this connection's snapshot transaction, a batch of plain
    # tuples per call: SQLAlchemy's row processing cost more than reading the rows. On
    # PostgreSQL a named (server-side) cursor, so the rows stream instead of all arriving.
    raw: Any = conn.connection.driver_connection
    server_side = conn.dialect.name == "postgresql"
    cursor = raw.cursor(name=f"gxa_verify_{kind}") if server_side else raw.cursor()
    count = 0
    try:
        cursor.execute(select_rows(kind, where))
        while batch := cursor.fetchmany(2_000):
            for values in batch:
                count += 1
                if count % 100_000 == 0:
                    progress(kind, count)
                if kind == "events":
                    digest = event_digest(*values)
                    name = f"seq {values[0]} (id {values[1]})"
                else:
                    digest = row_digest(kind, values)
                    name = f"{values[0]}"
                yield Row(int(values[0]), digest, name)
    finally:
        cursor.close()
    verdict.rows[kind] = count
    progress(kind, count)


__all__ = ["FIELDS", "Verdict", "seal_existing", "verify_archive"]
