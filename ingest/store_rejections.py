"""Rejected frames in ``rejected_events``: each frame once per source, its later arrivals counted.

A frame is known by the SHA-256 of its text (:attr:`~ingest.events.Rejection.raw_sha256`).
The resume overlap re-reads recent frames and a webhook is retried until it
is answered 2xx, so the same bad frame arrives again and again: the first
arrival is kept, the others add to ``repeats`` and move ``last_received_at``.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .events import Event, Rejection, reject
from .schema import rejected_events

__all__ = ["conflict", "record_rejections"]


def record_rejections(
    conn: Connection,
    source: str,
    run_id: int | None,
    rejections: list[tuple[Rejection, datetime]],
) -> None:
    """Insert each frame not yet recorded for this source; count the others as repeats.

    One writer per source and channel (the ingest lock, the receiver's own
    serialisation) keeps a frame to one row; should the stream and a webhook
    bring the same bad frame at the same instant, it may be recorded twice.
    """
    seen: dict[str, tuple[int, datetime]] = {}
    new: dict[str, tuple[Rejection, datetime]] = {}
    for rejection, received_at in rejections:
        key = rejection.raw_sha256
        if key in new or key in seen:
            count, latest = seen.get(key, (0, received_at))
            seen[key] = (count + 1, max(latest, received_at))
        else:
            new[key] = (rejection, received_at)
    _count_recorded(conn, source, new, seen)
    if new:
        conn.execute(
            rejected_events.insert(),
            [
                {
                    "source": source,
                    "received_at": received_at,
                    "reason": rejection.reason,
                    "raw": rejection.raw,
                    "raw_length": rejection.raw_length,
                    "event_id": rejection.event_id,
                    "run_id": run_id,
                    "raw_sha256": rejection.raw_sha256,
                }
                for rejection, received_at in new.values()
            ],
        )
    for key, (count, latest) in seen.items():
        _add_repeats(conn, source, key, count, latest)


def _count_recorded(
    conn: Connection,
    source: str,
    new: dict[str, tuple[Rejection, datetime]],
    seen: dict[str, tuple[int, datetime]],
) -> None:
    """Move frames already recorded for ``source`` from ``new`` to the repeats in ``seen``."""
    hashes = list(new)
    for start in range(0, len(hashes), 500):
        query = sa.select(rejected_events.c.raw_sha256, sa.func.min(rejected_events.c.id))
        query = query.where(
            rejected_events.c.source == source,
            rejected_events.c.raw_sha256.in_(hashes[start : start + 500]),
        ).group_by(rejected_events.c.raw_sha256)
        for key, _first in conn.execute(query):
            _rejection, received_at = new.pop(key)
            count, latest = seen.get(key, (0, received_at))
            seen[key] = (count + 1, max(latest, received_at))


def _add_repeats(conn: Connection, source: str, key: str, count: int, latest: datetime) -> None:
    """Count ``count`` more arrivals of a recorded frame, the newest at ``latest``."""
    first = (
        sa.select(sa.func.min(rejected_events.c.id))
        .where(rejected_events.c.source == source, rejected_events.c.raw_sha256 == key)
        .scalar_subquery()
    )
    conn.execute(
        rejected_events.update()
        .where(rejected_events.c.id == first)
        .values(
            repeats=rejected_events.c.repeats + count,
            last_received_at=sa.case(
                (
                    sa.or_(
                        rejected_events.c.last_received_at.is_(None),
                        rejected_events.c.last_received_at < latest,
                    ),
                    latest,
                ),
                else_=rejected_events.c.last_received_at,
            ),
        )
    )


def conflict(event: Event) -> Rejection:
    """The rejection recording an id archived before with a different payload."""
    return conflict_of(event.id, event.payload)


def conflict_of(event_id: str, payload: str) -> Rejection:
    """The rejection recording ``event_id`` archived before with a different ``payload``."""
    return reject(
        f"conflicting duplicate: event {event_id} is already archived with a different payload",
        payload,
        event_id,
    )
