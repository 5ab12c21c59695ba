"""A batch's events reduced to the fresh ones: the first of each id, in arrival order.

An id seen again within a batch with the same payload is a duplicate; with a
different payload the first stays and the conflict becomes a rejection.
Events the reader prepared come as rows (:class:`FreshRows`); so do all the
events of a SQLite archive, whose rows are made here when the reader did not
make them. PostgreSQL takes events given as received (the webhook receiver's)
as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .events import Event, Rejection, same_payload
from .prepare import ID, PAYLOAD, RECEIVED_AT, copy_lines, stored_time
from .rows import Received, sqlite_rows
from .store_rejections import conflict_of


@dataclass
class BatchResult:
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    rejected: int = 0
    next_key: int | None = None
    """The key the next event inserted will take, if no one else writes first (for the
    reader's guess, :mod:`ingest.key_guess`); None when this batch does not tell."""


@dataclass
class FreshRows:
    """Events as SQLite rows, with the digests the reader made for them (from the keys
    guessed from ``first_key``; the sealer checks both before it uses them), and for
    PostgreSQL their ``COPY`` lines."""

    rows: list[tuple[Any, ...]]
    digests: bytes | None = None
    lines: list[bytes] | None = None
    first_key: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def guessed(self) -> tuple[bytes | None, int | None]:
        """The reader's digests and the key they were made from (both None if not made)."""
        return self.digests, self.first_key

    def stored_as(self) -> dict[str, tuple[str, datetime]]:
        """Id to payload and time of receipt, to compare with what is stored."""
        return {row[ID]: (row[PAYLOAD], stored_time(row[RECEIVED_AT])) for row in self.rows}


Fresh = FreshRows | list[Received]


def fresh_rows(
    arrived: list[Received],
    source: str,
    rows: Sequence[tuple[Any, ...]],
    result: BatchResult,
    rejections: list[tuple[Rejection, datetime]],
    lines: Sequence[bytes | None] = (),
    copy: bool = False,
    digests: bytes = b"",
    first_key: int | None = None,
) -> FreshRows:
    """The fresh events among ``arrived`` (made into rows) and the prepared ``rows``
    (with their ``digests`` when the reader made them from keys guessed from
    ``first_key``); with ``copy`` (PostgreSQL), each with its ``COPY`` line."""
    if not arrived and len({row[ID] for row in rows}) == len(rows):
        # The usual batch: prepared rows only, no id twice.
        ready = list(lines) if copy and lines and None not in lines else None
        if not copy or ready is not None:
            return FreshRows(list(rows), digests or None, ready, first_key)  # type: ignore[arg-type]
    # Some rows are dropped or added here: the keys the reader guessed no longer hold.
    every = sqlite_rows(arrived, source) if arrived else []
    every += rows
    given: list[bytes | None] = [None] * len(arrived)
    given += lines if lines else [None] * len(rows)
    index: dict[str, int] = {}
    kept: list[tuple[Any, ...]] = []
    kept_lines: list[bytes | None] = []
    for row, line in zip(every, given, strict=True):
        ident = row[ID]
        seen = index.get(ident)
        if seen is None:
            index[ident] = len(kept)
            kept.append(row)
            kept_lines.append(line)
            continue
        result.duplicates += 1
        if not same_payload(kept[seen][PAYLOAD], row[PAYLOAD]):
            rejections.append((conflict_of(ident, row[PAYLOAD]), stored_time(row[RECEIVED_AT])))
            result.conflicts += 1
    if not copy:
        return FreshRows(kept)
    if None in kept_lines:
        kept_lines = [
            line or copy_lines([row])[0] for row, line in zip(kept, kept_lines, strict=True)
        ]
    return FreshRows(kept, None, kept_lines)  # type: ignore[arg-type]


def fresh_entries(
    arrived: list[Received],
    result: BatchResult,
    rejections: list[tuple[Rejection, datetime]],
) -> list[Received]:
    """The fresh events among ``arrived``, as received."""
    fresh: dict[str, Received] = {}
    for entry in arrived:
        item = entry.item
        assert type(item) is Event
        seen = fresh.get(item.id)
        if seen is None:
            fresh[item.id] = entry
            continue
        result.duplicates += 1
        if not same_payload(seen.item.payload, item.payload):  # type: ignore[union-attr]
            rejections.append((conflict_of(item.id, item.payload), entry.received_at))
            result.conflicts += 1
    return list(fresh.values())


def entries_as(entries: list[Received]) -> dict[str, tuple[str, datetime]]:
    """Id to payload and time of receipt, to compare with what is stored."""
    out = {}
    for entry in entries:
        item = entry.item
        assert type(item) is Event
        out[item.id] = (item.payload, entry.received_at)
    return out
