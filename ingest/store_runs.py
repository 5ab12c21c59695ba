"""The run records: one row per ingest run in ``ingest_runs``, one per connection attempt in
``ingest_connections``.

A connection's row is written when its request goes out (no status, no
first byte: the service may hold its head back for 30 s) and completed when
the head arrives or the attempt fails; the same row is then kept current:
each committed batch adds the connection's events and moves its
``last_seen_at`` in the same transaction
(:meth:`RunRecords.count_connections`), and so does each progress record.
A run killed before it could close its connection leaves the row open; the
next run of the source closes it at that last recorded activity
(:func:`abandoned_run_end`); a request still waiting for its head then
closes at its ``requested_at`` and covers nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .journal import PendingRun
from .schema import ingest_connections, ingest_runs
from .seal.chain import Sealer
from .timestamps import utc

ABANDONED_REASON = "run abandoned: closed at its last recorded activity"
"""The ``close_reason`` of a connection left open by a killed run."""

WAITING_REASON = "run ended before the response head"
"""The ``close_reason`` of a request whose run ended while it waited for its head."""

_REASON_LENGTH = 2000


@dataclass(frozen=True, slots=True)
class ConnectionShare:
    """What one batch holds of one connection's arrivals.

    ``events`` counts events (not rejected frames); ``last_received_at`` is
    when the newest of its frames arrived, the connection alive then.
    """

    connection_id: int
    events: int
    last_received_at: datetime


@dataclass(frozen=True, slots=True)
class OpenConnection:
    """A connection row a killed run left open, with the times it recorded."""

    id: int
    requested_at: datetime
    first_byte_at: datetime | None
    last_seen_at: datetime | None

    @property
    def last_activity(self) -> datetime:
        """The newest moment the run recorded this connection alive."""
        return self.last_seen_at or self.first_byte_at or self.requested_at


def abandoned_run_end(started_at: datetime, connection_ends: Iterable[datetime]) -> datetime:
    """When a killed run is taken to have ended: its connections' latest end, else its start.

    Coverage must not reach past what the run recorded, nor start a gap at
    the run's start when it covered time after it.
    """
    return max(connection_ends, default=started_at)


_c = ingest_connections.c
_seen = sa.bindparam("seen", type_=_c.last_seen_at.type)
_COUNT_CONNECTION = (
    ingest_connections.update()
    .where(_c.id == sa.bindparam("connection_id"))
    .values(
        events=_c.events + sa.bindparam("added", type_=sa.Integer()),
        # Batches and progress records may commit out of order.
        last_seen_at=sa.case(
            (sa.or_(_c.last_seen_at.is_(None), _c.last_seen_at < _seen), _seen),
            else_=_c.last_seen_at,
        ),
    )
)


class RunRecords:
    """What an ingest records about itself; :class:`~ingest.store.Store` has these methods."""

    engine: Engine

    def start_run(
        self,
        source: str,
        started_at: datetime,
        since: datetime | None,
        types: Sequence[str],
        base_url: str,
        pending: PendingRun | None = None,
    ) -> int:
        """Record a new run; first settle the runs of this source that never recorded an end.

        ``pending`` is a run's final record that the database refused when
        that run ended (see :mod:`ingest.journal`): it is applied as it
        was. Any other run still marked running was killed: it becomes
        ``abandoned``, with the counts of its last progress update; its open
        connections close at their last recorded activity, and the run
        finishes at the latest of its connections' ends.
        """
        with self.engine.begin() as conn:
            sealer = Sealer(conn)
            final: list[int] = []
            if pending is not None:
                final += _apply_pending(conn, source, pending)
            # The caller holds this source's lock, so an earlier run still
            # marked running was killed before it could record its end.
            final += _settle_abandoned(conn, source)
            # A run's record is sealed once, when it is final.
            sealer.rows_with_keys("runs", final)
            sealer.close()
            run_id = conn.execute(
                ingest_runs.insert().returning(ingest_runs.c.id),
                {
                    "source": source,
                    "started_at": started_at,
                    "since_requested": since,
                    "types": ",".join(types) or None,
                    "base_url": base_url,
                    "outcome": "running",
                },
            ).scalar_one()
        return int(run_id)

    def update_run(self, run_id: int, **values: Any) -> None:
        """Update a run's record; one given a final ``outcome`` is sealed with it."""
        with self.engine.begin() as conn:
            final = values.get("outcome", "running") != "running"
            sealer = Sealer(conn) if final else None
            conn.execute(ingest_runs.update().where(ingest_runs.c.id == run_id).values(**values))
            if sealer is not None:
                sealer.rows_with_keys("runs", [run_id])
                sealer.close()

    def record_progress(
        self,
        run_id: int,
        values: dict[str, Any],
        connection_id: int | None,
        seen_at: datetime,
    ) -> None:
        """Update the run's counts; mark its open connection, if any, alive at ``seen_at``."""
        with self.engine.begin() as conn:
            conn.execute(ingest_runs.update().where(ingest_runs.c.id == run_id).values(**values))
            if connection_id is not None:
                self.count_connections(conn, [ConnectionShare(connection_id, 0, seen_at)])

    def request_connection(
        self, run_id: int, requested_at: datetime, since: datetime | None
    ) -> int:
        """Record a request that went out and waits for its response head.

        :meth:`open_connection` or :meth:`record_attempt` completes the row
        (``request_id``); a run that ends first closes it with
        :data:`WAITING_REASON`.
        """
        with self.engine.begin() as conn:
            conn_id = conn.execute(
                ingest_connections.insert().returning(_c.id),
                {
                    "run_id": run_id,
                    "requested_at": requested_at,
                    "since_requested": since,
                    "events": 0,
                },
            ).scalar_one()
        return int(conn_id)

    def open_connection(
        self,
        run_id: int,
        requested_at: datetime,
        first_byte_at: datetime,
        since: datetime | None,
        status_code: int,
        request_id: int | None = None,
    ) -> int:
        """Record a connection that became a stream; its events are counted as they commit.

        With ``request_id`` (the row :meth:`request_connection` wrote), that
        row is completed; its id is returned either way.
        """
        values = {
            "run_id": run_id,
            "requested_at": requested_at,
            "first_byte_at": first_byte_at,
            "since_requested": since,
            "status_code": status_code,
        }
        with self.engine.begin() as conn:
            if request_id is not None:
                _complete(conn, request_id, values)
                return request_id
            conn_id = conn.execute(
                ingest_connections.insert().returning(_c.id), values
            ).scalar_one()
        return int(conn_id)

    def close_connection(self, conn_id: int, closed_at: datetime, reason: str) -> None:
        """Close a connection's row (its events were counted by the batches that committed).

        A progress record made while the close was still queued may have
        marked it alive a little later: ``last_seen_at`` never passes
        ``closed_at``.
        """
        closed = sa.bindparam("closed", closed_at, type_=_c.closed_at.type)
        with self.engine.begin() as conn:
            conn.execute(
                ingest_connections.update()
                .where(_c.id == conn_id)
                .values(
                    closed_at=closed,
                    close_reason=reason[:_REASON_LENGTH],
                    last_seen_at=sa.case((_c.last_seen_at > closed, closed), else_=_c.last_seen_at),
                )
            )

    def record_attempt(
        self,
        run_id: int,
        requested_at: datetime,
        first_byte_at: datetime | None,
        closed_at: datetime,
        since: datetime | None,
        status_code: int | None,
        reason: str,
        request_id: int | None = None,
    ) -> None:
        """A connection attempt that never became a stream (refused, 401, 429, 5xx...).

        ``first_byte_at`` and ``status_code`` are None when no answer came.
        With ``request_id`` (the row :meth:`request_connection` wrote), that
        row is completed.
        """
        values = {
            "run_id": run_id,
            "requested_at": requested_at,
            "first_byte_at": first_byte_at,
            "closed_at": closed_at,
            "since_requested": since,
            "status_code": status_code,
            "events": 0,
            "close_reason": reason[:_REASON_LENGTH],
        }
        with self.engine.begin() as conn:
            if request_id is not None:
                _complete(conn, request_id, values)
            else:
                conn.execute(ingest_connections.insert(), values)

    @staticmethod
    def count_connections(conn: Connection, shares: Sequence[ConnectionShare]) -> None:
        """Add each share's events to its connection and move its ``last_seen_at`` forward.

        Runs inside the transaction that commits the batch, so a connection's
        ``events`` is always what is committed of it, even after a kill.
        """
        # One statement per share (a batch rarely holds two): a single
        # execute costs PostgreSQL a third of an executemany of one.
        for share in shares:
            conn.execute(
                _COUNT_CONNECTION,
                {
                    "connection_id": share.connection_id,
                    "added": share.events,
                    "seen": share.last_received_at,
                },
            )


def _complete(conn: Connection, request_id: int, values: dict[str, Any]) -> None:
    """Write what the answer to a recorded request says into its row."""
    conn.execute(ingest_connections.update().where(_c.id == request_id).values(**values))


def _apply_pending(conn: Connection, source: str, pending: PendingRun) -> list[int]:
    """Apply a run's final record kept in the journal; the run, if it was still running."""
    applied = conn.execute(
        ingest_runs.update()
        .where(
            ingest_runs.c.id == pending.run_id,
            ingest_runs.c.source == source,
            ingest_runs.c.outcome == "running",
        )
        .values(**pending.values)
    )
    if pending.connection_id is not None and pending.connection_values:
        conn.execute(
            ingest_connections.update()
            .where(
                _c.id == pending.connection_id,
                _c.run_id == pending.run_id,
                _c.closed_at.is_(None),
            )
            .values(**pending.connection_values)
        )
    final = applied.rowcount == 1 and pending.values.get("outcome", "running") != "running"
    return [pending.run_id] if final else []


def _settle_abandoned(conn: Connection, source: str) -> list[int]:
    """Mark this source's runs still ``running`` abandoned, closing what they left open.

    Returns the runs it marked."""
    killed = conn.execute(
        sa.select(ingest_runs.c.id, ingest_runs.c.started_at).where(
            ingest_runs.c.source == source, ingest_runs.c.outcome == "running"
        )
    ).all()
    for run_id, started_at in killed:
        left_open = [
            OpenConnection(
                row.id, _aware(row.requested_at), utc(row.first_byte_at), utc(row.last_seen_at)
            )
            for row in conn.execute(
                sa.select(_c.id, _c.requested_at, _c.first_byte_at, _c.last_seen_at).where(
                    _c.run_id == run_id, _c.closed_at.is_(None)
                )
            )
        ]
        for connection in left_open:
            conn.execute(
                ingest_connections.update()
                .where(_c.id == connection.id)
                .values(closed_at=connection.last_activity, close_reason=ABANDONED_REASON)
            )
        ends = conn.execute(sa.select(_c.closed_at).where(_c.run_id == run_id)).scalars()
        finished_at = abandoned_run_end(_aware(started_at), (_aware(end) for end in ends if end))
        conn.execute(
            ingest_runs.update()
            .where(ingest_runs.c.id == run_id)
            .values(outcome="abandoned", finished_at=finished_at)
        )
    return [run_id for run_id, _ in killed]


def _aware(value: datetime) -> datetime:
    """A stored time as aware UTC (SQLite returns it naive)."""
    aware = utc(value)
    assert aware is not None
    return aware
