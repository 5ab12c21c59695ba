"""The keys (``seq``) the archive will give the rows a reader prepares, guessed ahead.

A row's digest in the hash chain starts with its ``seq``, which only the
insert allocates, so without a guess the writer (the slower side of an
ingest) would hash every row itself. While the ingest is the archive's only
writer and every row it sends is new, the rows take consecutive keys: the
row the reader prepared n-th (its *row number*) takes the key n + offset.
The reader numbers its rows and, once it knows the offset, makes each row's
digest from the key it guesses (:func:`ingest.prepare.prepare_rows`).

The writer checks every guess against the keys the insert gave: a wrong
guess costs only the digests' remaking, never a wrong link. After each batch
it tells the reader the key the next row will take (:meth:`KeyGuess.correct`),
when the batch's guess would miss it: at the start of a run (the reader
knows no offset yet), after rows that were archived already, or after another
writer's rows. A correction is absolute (this row number takes that key), so
a late or repeated one does no harm.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


class KeyGuess:
    """The reader's row numbers and its guess of their keys. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows = 0
        self._offset: int | None = None

    def take(self, count: int) -> tuple[int, int | None]:
        """Number the next ``count`` rows: the first one's number and its guessed key
        (None while no offset is known)."""
        with self._lock:
            first = self._rows
            self._rows += count
            return first, None if self._offset is None else first + self._offset

    def correct(self, row: int, key: int) -> None:
        """The row numbered ``row`` takes the key ``key`` (and the rows after it the keys
        after that)."""
        with self._lock:
            self._offset = key - row


@dataclass
class Guessed:
    """The rows of one batch as the reader numbered them: ``first_row`` and ``next_row``
    (the number after the last), and the key guessed for the first row, None when the
    batch's rows do not all carry digests made from one offset."""

    first_row: int | None = None
    next_row: int | None = None
    first_key: int | None = None

    def add(self, first_row: int, count: int, first_key: int | None) -> None:
        """``count`` more rows, numbered from ``first_row``, their keys guessed from
        ``first_key`` (None: no digests made)."""
        if not count:
            return
        if self.first_row is None or self.next_row is None:
            self.first_row, self.first_key = first_row, first_key
        elif self.first_key is not None and (
            first_key is None
            or first_row != self.next_row
            or first_key - first_row != self.first_key - self.first_row
        ):
            self.first_key = None
        self.next_row = first_row + count

    def correction(self, next_key: int | None) -> tuple[int, int] | None:
        """What to tell the reader once the batch is written and the next row will take
        ``next_key`` (None: unknown): ``(row number, key)``, or None when its guess holds."""
        if next_key is None or self.next_row is None or self.first_row is None:
            return None
        if (
            self.first_key is not None
            and self.first_key - self.first_row + self.next_row == next_key
        ):
            return None
        return self.next_row, next_key
