"""Writing the hash chain: links appended in the transaction that writes their rows.

Every transaction that writes events, rejected frames or a final run record
first takes the chain head (:func:`take_head`: an UPDATE of the one row of
``chain_head``, which holds SQLite's write lock or PostgreSQL's row lock
until the commit), so sealing writers run one after another: the rows a
transaction inserts are exactly those above the keys it read after taking
the head, and the chain's order is the order links commit. Each link is
appended (:meth:`Sealer.append`) before the commit, so a committed row
outside every link is a forgery.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.engine import Connection

from ..prepare import DIGEST_SIZE, ZERO, event_digests, sqlite_time
from .canonical import FIELDS, Link, encode_keys, event_digest, row_digest

TABLES = {"events": ("events", "seq"), "rejected": ("rejected_events", "id"),
          "runs": ("ingest_runs", "id")}  # fmt: skip
"""Per kind of link: the table and its key column."""


@dataclass(frozen=True, slots=True)
class Head:
    """The newest link: its number (0 before the first) and hash."""

    n: int
    hash: str


def take_head(conn: Connection) -> Head:
    """Lock the chain head for this transaction and read it."""
    driver(conn, "UPDATE chain_head SET n = n WHERE id = 1")
    n, digest = driver(conn, "SELECT n, hash FROM chain_head WHERE id = 1")[0]
    return Head(int(n), str(digest))


def max_key(conn: Connection, kind: str) -> int:
    """The highest key of a kind's table (0 when empty), read under the head lock."""
    table, key = TABLES[kind]
    return int(driver(conn, f"SELECT max({key}) FROM {table}")[0][0] or 0)


def driver(conn: Connection, statement: str, params: Sequence[Any] = ()) -> list[Any]:
    """Run ``statement`` (``?`` marks its parameters) on the driver's own cursor, in the
    connection's transaction; its rows as plain tuples. Sealing runs a few statements per
    batch: SQLAlchemy's building, compiling and row objects cost more than they do."""
    if params and conn.dialect.paramstyle != "qmark":
        statement = statement.replace("?", "%s")
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement, params)
        return list(cursor.fetchall()) if cursor.description is not None else []
    finally:
        cursor.close()


def digests_of(kind: str, rows: Iterable[Sequence[Any]]) -> tuple[list[int], bytes]:
    """The keys and concatenated digests of rows read as ``TABLES[kind]`` lists them."""
    keys: list[int] = []
    parts: list[bytes] = []
    if kind == "events":
        for row in rows:
            keys.append(int(row[0]))
            parts.append(event_digest(*row))
    else:
        for row in rows:
            keys.append(int(row[0]))
            parts.append(row_digest(kind, row))
    return keys, b"".join(parts)


def select_rows(kind: str, where: str) -> str:
    """The statement reading a kind's sealed columns for the rows ``where`` picks, by key."""
    table, key = TABLES[kind]
    return f"SELECT {', '.join(FIELDS[kind])} FROM {table} WHERE {where} ORDER BY {key}"


class Sealer:
    """Appends links within one transaction, from the head it took."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.head = take_head(conn)
        self._moved = False

    def rows_above(self, kind: str, after: int) -> int:
        """Seal the rows of ``kind`` whose key is above ``after`` (this transaction's);
        returns the key after the last of them."""
        rows = self._fetch(select_rows(kind, f"{TABLES[kind][1]} > {int(after)}"))
        keys, digests = digests_of(kind, rows)
        self.append(kind, keys, digests)
        return (keys[-1] if keys else after) + 1

    def _fetch(self, statement: str) -> list[Any]:
        return driver(self.conn, statement)

    def events_bound(
        self,
        after: int,
        rows: Sequence[Sequence[Any]],
        channel: str,
        inserted: int,
        digests: bytes | None = None,
        first_key: int | None = None,
    ) -> int | None:
        """Seal the events above ``after`` from ``rows``, the values SQLite's insert bound
        (:func:`ingest.prepare.sqlite_row`, with ``channel`` in the statement) or
        PostgreSQL's ``COPY`` carried (:func:`ingest.prepare.copy_lines`), when each of
        them went in, in order; else (some were already archived) as :meth:`rows_above`.
        ``inserted`` is how many rows the insert reported; ``digests`` are the rows'
        digests when the reader made them already, from keys guessed from ``first_key``
        (:mod:`ingest.key_guess`): used when those are the keys the rows took. Returns
        the key the next event will take, if no one else writes first.

        What SQLite stores is what was bound, with ``''`` and NaN made NULL by the
        statement: text in text columns and finite floats in ``REAL`` ones unchanged, times
        in SQLite's own text form. Digesting the bound values skips reading back every
        column of every row, which cost the write path more than the digests themselves.
        Which key each row got needs no read-back either: this transaction holds the chain
        head from its UPDATE on (SQLite's write lock; on PostgreSQL the head's row lock,
        which every writer takes before it inserts), so the rows above ``after`` are the
        ones it inserted, and each insert takes a key above the one before, in the order
        of ``rows``. The insert's count and the lowest and highest key above ``after`` show
        that every row went in and which keys they took; each of the two keys is one
        B-tree descent, where a count over the rows would read every one of them.
        """
        if inserted != len(rows):
            return self.rows_above("events", after)
        if not inserted:
            return after + 1
        [(low,)] = self._fetch(f"SELECT min(seq) FROM events WHERE seq > {int(after)}")
        [(high,)] = self._fetch("SELECT max(seq) FROM events")
        keys: Sequence[int]
        if high - low == inserted - 1:
            keys = range(low, high + 1)
        else:
            keys = [
                seq
                for (seq,) in self._fetch(
                    f"SELECT seq FROM events WHERE seq > {int(after)} ORDER BY seq"
                )
            ]
        if len(keys) != len(rows):
            return self.rows_above("events", after)
        self._append_events(keys, rows, channel, ZERO[self.conn.dialect.name], digests, first_key)
        return int(keys[-1]) + 1

    def events_returned(
        self,
        keyed: Sequence[tuple[int, str]],
        rows: Sequence[Sequence[Any]],
        channel: str,
        digests: bytes | None = None,
        first_key: int | None = None,
    ) -> int | None:
        """Seal the events a PostgreSQL insert returned (``seq`` and id of each) from
        ``rows``, the values it was given (:func:`ingest.prepare.copy_lines`), when it
        inserted every one of them in order; else from the rows read back by key.
        ``digests`` and ``first_key`` and what is returned are those of
        :meth:`events_bound`.

        PostgreSQL stores what it was given: text unchanged, NULL for ``''`` and NaN as
        the lines say, floats exactly (``-0.0`` too), times to the microsecond.
        """
        keyed = sorted(keyed)
        keys = [seq for seq, _ in keyed]
        if len(keyed) != len(rows) or any(
            ident != row[0] for (_, ident), row in zip(keyed, rows, strict=True)
        ):
            self.rows_with_keys("events", keys)
        else:
            self._append_events(keys, rows, channel, ZERO["postgresql"], digests, first_key)
        return keys[-1] + 1 if keys else None

    def _append_events(
        self,
        keys: Sequence[int],
        rows: Sequence[Sequence[Any]],
        channel: str,
        zero: float,
        digests: bytes | None,
        first_key: int | None,
    ) -> None:
        """The link over ``rows``, which took ``keys``: with the reader's ``digests`` when
        it guessed those keys, else with digests made here."""
        if (
            digests is None
            or first_key != keys[0]
            or keys[-1] - keys[0] != len(keys) - 1
            or len(digests) != DIGEST_SIZE * len(keys)
        ):
            digests = event_digests(keys, rows, channel, zero)
        self.append("events", keys, digests)

    def rows_with_keys(self, kind: str, keys: Sequence[int]) -> None:
        """Seal the rows of ``kind`` with these keys (e.g. runs that became final)."""
        if not keys:
            return
        listed = ", ".join(str(int(k)) for k in sorted(keys))
        rows = self.conn.exec_driver_sql(select_rows(kind, f"{TABLES[kind][1]} IN ({listed})"))
        self.append(kind, *digests_of(kind, rows))

    def append(self, kind: str, keys: Sequence[int], digests: bytes) -> Link | None:
        """Append one link over ``keys`` (ascending) and their ``digests``; none for no rows."""
        if not keys:
            return None
        link = Link(
            n=self.head.n + 1,
            kind=kind,
            prev=self.head.hash,
            keys=encode_keys(keys),
            count=len(keys),
            digests=digests,
            created_at=datetime.now(timezone.utc),
        )
        digest = link.hash()
        created: Any = link.created_at
        if self.conn.dialect.name == "sqlite":
            created = sqlite_time(created)  # the text SQLAlchemy's DateTime stores
        driver(
            self.conn,
            "INSERT INTO chain_links (n, kind, prev, keys, count, digests, created_at, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (link.n, kind, link.prev, link.keys, link.count, digests, created, digest),
        )
        self.head = Head(link.n, digest)
        self._moved = True
        return link

    def close(self) -> None:
        """Store the new head (in the same transaction, before its commit)."""
        if self._moved:
            driver(
                self.conn,
                "UPDATE chain_head SET n = ?, hash = ? WHERE id = 1",
                (self.head.n, self.head.hash),
            )
            self._moved = False
