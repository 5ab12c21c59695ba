"""A chunk into the pending batch: the run's counts, its event times and the ``--max-events`` cut.

A chunk comes from the reader either as normalised items (events and
rejections, in arrival order) or, for a SQLite archive, as prepared rows with
their times summarised (:mod:`ingest.prepare`) and only the rejections as
items.
"""

from __future__ import annotations

import logging
from datetime import datetime

from .batch_writer import Batch
from .events import Event
from .prepare import DIGEST_SIZE, PreparedEvents, summarise
from .reader import Normalised
from .resume import MAX_CLOCK_SKEW, latest_plausible
from .rows import Received
from .run_record import RunCounts
from .timestamps import format_timestamp

log = logging.getLogger("grantex_archive.ingest")


def take(
    chunk: Normalised,
    batch: Batch,
    c: RunCounts,
    limit: int | None,
    connection_id: int | None,
) -> int:
    """Add a chunk to the pending ``batch`` and count it in ``c``, up to ``limit`` events
    (``--max-events``); returns the events received. ``connection_id`` is the connection
    the chunk came over."""
    if limit is not None and c.received >= limit:
        return c.received
    if chunk.prepared is not None:
        return _take_prepared(chunk, chunk.prepared, batch, c, limit, connection_id)
    received_at = chunk.received_at
    # The plausibility bound once per chunk, not once per event.
    bound = latest_plausible(received_at)
    entries, newest = batch.entries, batch.newest
    before, received_before = len(entries), c.received
    for item in chunk.items:
        entries.append(Received(item, received_at))
        if type(item) is Event:
            c.received += 1
            occurred = item.occurred_at
            if c.first_occurred_at is None or occurred < c.first_occurred_at:
                c.first_occurred_at = occurred
            if occurred > bound:
                _warn_implausible(item.id, occurred, received_at)
            else:
                if newest is None or occurred > newest:
                    newest = occurred
                if c.last_occurred_at is None or occurred > c.last_occurred_at:
                    c.last_occurred_at = occurred
            if limit is not None and c.received >= limit:
                break
    batch.newest = newest
    if len(entries) > before:
        batch.came_over(connection_id, c.received - received_before, received_at)
    return c.received


def _take_prepared(
    chunk: Normalised,
    prepared: PreparedEvents,
    batch: Batch,
    c: RunCounts,
    limit: int | None,
    connection_id: int | None,
) -> int:
    """:func:`take` for a chunk whose events came as SQLite rows, with their times."""
    received_at = chunk.received_at
    rows, digests, lines = prepared.rows, prepared.digests, prepared.lines
    first_row, first_key = prepared.first_row, prepared.first_key
    if limit is not None and c.received + len(rows) > limit:
        rows = rows[: limit - c.received]
        digests = digests[: DIGEST_SIZE * len(rows)] if digests is not None else None
        lines = lines[: len(rows)] if lines is not None else None
        prepared = summarise(rows, latest_plausible(received_at))
    batch.rows += rows
    if digests:
        batch.digests.append(digests)
    batch.guessed.add(first_row, len(rows), first_key)
    batch.lines += lines if lines is not None else [None] * len(rows)
    batch.entries += [Received(item, received_at) for item in chunk.items]
    c.received += len(rows)
    earliest, newest = prepared.earliest, prepared.newest
    if earliest is not None and (c.first_occurred_at is None or earliest < c.first_occurred_at):
        c.first_occurred_at = earliest
    if newest is not None:
        if batch.newest is None or newest > batch.newest:
            batch.newest = newest
        if c.last_occurred_at is None or newest > c.last_occurred_at:
            c.last_occurred_at = newest
    for event_id, occurred in prepared.implausible:
        _warn_implausible(event_id, occurred, received_at)
    if rows or chunk.items:
        batch.came_over(connection_id, len(rows), received_at)
    return c.received


def _warn_implausible(event_id: str, occurred_at: datetime, received_at: datetime) -> None:
    log.warning(
        "event %s is dated %s, more than %s after it arrived (%s): archived, "
        "but not used as the resume point",
        event_id,
        format_timestamp(occurred_at),
        _skew_text(),
        format_timestamp(received_at),
    )


def _skew_text() -> str:
    hours = MAX_CLOCK_SKEW.total_seconds() / 3600
    return f"{hours:g} hours" if hours != 24 else "1 day"
