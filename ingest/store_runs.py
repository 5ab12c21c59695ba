"""The run records: one row per ingest run in ``ingest_runs``, one per connection attempt in
``ingest_connections``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Engine

from .journal import PendingRun
from .schema import ingest_connections, ingest_runs


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
        ``abandoned``, with the counts of its last progress update.
        """
        with self.engine.begin() as conn:
            if pending is not None:
                conn.execute(
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
                            ingest_connections.c.id == pending.connection_id,
                            ingest_connections.c.run_id == pending.run_id,
                            ingest_connections.c.closed_at.is_(None),
                        )
                        .values(**pending.connection_values)
                    )
            # The caller holds this source's lock, so an earlier run still
            # marked running was killed before it could record its end.
            conn.execute(
                ingest_runs.update()
                .where(ingest_runs.c.source == source, ingest_runs.c.outcome == "running")
                .values(outcome="abandoned")
            )
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
        with self.engine.begin() as conn:
            conn.execute(ingest_runs.update().where(ingest_runs.c.id == run_id).values(**values))

    def open_connection(
        self, run_id: int, opened_at: datetime, since: datetime | None, status_code: int | None
    ) -> int:
        with self.engine.begin() as conn:
            conn_id = conn.execute(
                ingest_connections.insert().returning(ingest_connections.c.id),
                {
                    "run_id": run_id,
                    "requested_at": opened_at,
                    "first_byte_at": opened_at,
                    "since_requested": since,
                    "status_code": status_code,
                },
            ).scalar_one()
        return int(conn_id)

    def close_connection(
        self, conn_id: int, closed_at: datetime, received: int, reason: str
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                ingest_connections.update()
                .where(ingest_connections.c.id == conn_id)
                .values(closed_at=closed_at, events=received, close_reason=reason[:2000])
            )

    def record_attempt(
        self,
        run_id: int,
        at: datetime,
        since: datetime | None,
        status_code: int | None,
        reason: str,
    ) -> None:
        """A connection attempt that never became a stream (refused, 429, 5xx)."""
        with self.engine.begin() as conn:
            conn.execute(
                ingest_connections.insert(),
                {
                    "run_id": run_id,
                    "requested_at": at,
                    "first_byte_at": at,
                    "closed_at": at,
                    "since_requested": since,
                    "status_code": status_code,
                    "events": 0,
                    "close_reason": reason[:2000],
                },
            )
