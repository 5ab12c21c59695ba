"""Which archive rows an export read, recorded so that `verify-export --archive` finds them.

An export reads the analytics copy, not the archive, and the copy is not
always a prefix of the chain: ``--no-refresh`` reads an older copy, and on
PostgreSQL ``seq`` is allocated at insert, not at commit, so a row may commit
after rows with a higher ``seq`` have been copied. The exact description of
the rows an export read is therefore:

    every archive row with ``seq <= max_seq``, except the ``absent`` ones
    and those sealed in an ``events`` link numbered above the chain head ``n``,

read as follows (``bound_of``). The chain head ``n`` is read after the copy
was opened, so every row the copy holds was committed, and sealed (a link is
written in the row's own transaction), at or before link ``n``. ``max_seq``
is the copy's highest ``seq``. ``absent`` lists the archive's rows with
``seq <= max_seq`` that were committed by the time the head was read but are
not in the copy (rows committed out of ``seq`` order that the copy had not
yet fetched): found by comparing the archive's ``seq`` values with the
copy's, and usually empty, which a count tells without reading them.

A row committed after the export (in a link above ``n``) is left out however
low its ``seq``; a row in no link at all (written before the chain, up to
``seal``) was committed before the export read the copy, so it is in.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import sqlalchemy as sa

from ingest.schema import chain_head, chain_links
from ingest.seal.canonical import encode_keys, key_spans

from ..copy import ArchiveReader, archive_read_engine


@dataclass(frozen=True)
class RowBound:
    """The archive rows an export saw: ``seq <= max_seq`` but none of ``excluded``."""

    max_seq: int
    excluded: tuple[int, ...] = ()

    def where(self) -> tuple[str, dict[str, Any]]:
        """A WHERE clause over the events view, with its parameters."""
        if not self.excluded:
            return "seq <= $bound_max_seq", {"bound_max_seq": self.max_seq}
        return (
            "seq <= $bound_max_seq AND seq NOT IN (SELECT unnest($bound_excluded))",
            {"bound_max_seq": self.max_seq, "bound_excluded": list(self.excluded)},
        )


def chain_head_now(engine: sa.Engine) -> dict[str, Any] | None:
    """The chain head as a manifest records it, ``{"n", "hash"}``; None for no chain."""
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.select(chain_head.c.n, chain_head.c.hash)).first()
    except sa.exc.SQLAlchemyError:
        return None
    return None if row is None else {"n": int(row[0]), "hash": str(row[1])}


def sealed_after(engine: sa.Engine, n: int, max_seq: int) -> Iterator[int]:
    """The ``seq`` values up to ``max_seq`` that ``events`` links numbered above ``n`` seal."""
    query = (
        sa.select(chain_links.c["keys"])
        .where(chain_links.c.n > n, chain_links.c.kind == "events")
        .order_by(chain_links.c.n)
    )
    with engine.connect() as conn:
        for (keys,) in conn.execute(query):
            for lo, hi in key_spans(str(keys)):
                yield from range(lo, min(hi, max_seq) + 1)


def _archive_rows(reader: ArchiveReader, conn: duckdb.DuckDBPyConnection, max_seq: int) -> int:
    """The archive's rows with ``seq <= max_seq``, counted from its indexes.

    All rows less those above: SQLite counts all rows from its smallest index
    and those above from the newest rows, never reading the older rows' pages.
    """
    (count,) = reader.scalar_row(
        "SELECT (SELECT count(*) FROM events) - "
        f"(SELECT count(*) FROM events WHERE seq > {max_seq})",
        conn,
    )
    return int(count)


def _absent(reader: ArchiveReader, conn: duckdb.DuckDBPyConnection, max_seq: int) -> list[int]:
    """The archive's ``seq`` values up to ``max_seq`` that the copy's events view lacks."""
    stream = reader.stream(f"SELECT seq FROM events WHERE seq <= {max_seq}")
    try:
        conn.from_arrow(stream).create_view("export_archive_seqs", replace=True)
        found = conn.execute(
            "SELECT seq FROM export_archive_seqs ANTI JOIN "
            f"(SELECT seq FROM events WHERE seq <= {max_seq}) USING (seq) ORDER BY seq"
        ).fetchall()
        conn.execute("DROP VIEW export_archive_seqs").fetchall()
    finally:
        stream.close()
    return [int(row[0]) for row in found]


def bound_of(
    conn: duckdb.DuckDBPyConnection, db_url: str
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The chain head and the row bound for an export reading the copy's views on ``conn``.

    Call it once the views are loaded: the head is read after them. Returns
    ``(chain, bound)`` as the manifest records them, ``(None, None)`` for an
    archive without a chain (read by an older version's schema).
    """
    engine = archive_read_engine(db_url)
    try:
        chain = chain_head_now(engine)
        if chain is None:
            return None, None
        (top, held) = conn.execute("SELECT coalesce(max(seq), 0), count(*) FROM events").fetchall()[
            0
        ]
        max_seq = int(top)
        absent: list[int] = []
        reader = ArchiveReader(db_url)
        try:
            if _archive_rows(reader, conn, max_seq) != int(held):
                absent = _absent(reader, conn, max_seq)
        finally:
            reader.close()
        if absent:
            # Read after the archive's rows: a row committed since the head is in a later link.
            later = set(sealed_after(engine, chain["n"], max_seq))
            absent = [seq for seq in absent if seq not in later]
    finally:
        engine.dispose()
    return chain, {"max_seq": max_seq, "absent": encode_keys(absent)}


def row_bound(engine: sa.Engine, chain: dict[str, Any], bound: dict[str, Any]) -> RowBound:
    """The rows a manifest's ``chain`` and ``bound`` describe, as the archive now holds them.

    Read after the rows are (the copy built for re-deriving): every row
    committed since the export is then in a link above the head.
    """
    max_seq = int(bound["max_seq"])
    excluded = set(sealed_after(engine, int(chain["n"]), max_seq))
    excluded.update(_spans(str(bound["absent"])))
    return RowBound(max_seq, tuple(sorted(excluded)))


def _spans(encoded: str) -> Iterable[int]:
    for lo, hi in key_spans(encoded):
        yield from range(lo, hi + 1)
