"""The simulator's event log: every generated frame, rendered once, append-only.

Frames share one ``bytearray`` with parallel ``array`` columns (offset, timestamp in ms,
type code). A replay is then a few large buffer slices, and a streaming client is just
a cursor into the log, so history and live delivery can never gap or overlap. The log
also answers where a new stream starts: after a ``Last-Event-ID`` or at ``since``.
"""

from __future__ import annotations

import bisect
import json
import threading
from array import array
from itertools import accumulate, chain, islice
from typing import Any, cast

from .generator import Batch
from .ids import ulid_ms


class History:
    """Append-only log of rendered frames; columns are arrays, frames share one buffer."""

    def __init__(self, emit_ids: bool) -> None:
        self.cond = threading.Condition()
        self.buf = bytearray()
        self.offsets: array[int] = array("q", [0])
        self.ts: array[int] = array("q")
        self.types: array[int] = array("B")
        # 1 where a stream connection was sent the event in full: the delivery ledger.
        self.streamed = bytearray()
        self.count = 0
        self.last_ts = 0
        self.emit_ids = emit_ids
        # The JSON starts after "data: " (and the fixed-width "id: evt_<26>\n" line).
        self.json_skip = (4 + 30 + 1 + 6) if emit_ids else 6

    def append(self, batch: Batch) -> None:
        frames = batch.frames
        if not frames:
            return
        blob = "".join(frames)
        with self.cond:
            offsets = self.offsets
            if blob.isascii():
                # ASCII: str lengths are byte lengths, so one encode serves the whole batch
                # and the offsets are a running sum computed without a Python-level loop.
                self.buf += blob.encode("ascii")
                ends = accumulate(chain((offsets[-1],), map(len, frames)))
                offsets.extend(islice(ends, 1, None))
            else:
                for frame in frames:
                    data = frame.encode("utf-8")
                    self.buf += data
                    offsets.append(offsets[-1] + len(data))
            self.ts.extend(batch.ts)
            self.types.extend(batch.codes)
            self.streamed.extend(bytes(len(frames)))
            self.last_ts = batch.ts[-1]
            # Publish the new length last: readers only look at indices below `count`.
            self.count += len(frames)
            self.cond.notify_all()

    def mark_streamed(self, lo: int, hi: int) -> None:
        """Record that the events ``lo`` to ``hi - 1`` were sent in full over a stream."""
        self.streamed[lo:hi] = b"\x01" * (hi - lo)

    def envelope(self, index: int) -> dict[str, Any]:
        start = self.offsets[index] + self.json_skip
        end = self.offsets[index + 1] - 2
        return cast("dict[str, Any]", json.loads(self.buf[start:end]))

    def start_index(self, since_ms: int | None, last_event_id: str | None) -> int:
        """The log index a new stream starts at.

        Just after a known Last-Event-ID (when frames carry ids), else at the first event
        at or after ``since_ms``, else at the end (live events only).
        """
        with self.cond:
            count = self.count
            if self.emit_ids and last_event_id:
                index = self.find(last_event_id.strip(), count)
                if index is not None:
                    return index + 1
            if since_ms is not None:
                return bisect.bisect_left(self.ts, since_ms, 0, count)
            return count

    def find(self, event_id: str, count: int) -> int | None:
        """Index of a known event id, found via its ULID time part: no id index is kept.

        Only meaningful when frames carry ``id:`` lines (``emit_ids``).
        """
        if not event_id.startswith("evt_"):
            return None
        ms = ulid_ms(event_id[4:])
        if ms is None:
            return None
        needle = ("evt_" + event_id[4:].upper()).encode("ascii")
        lo = bisect.bisect_left(self.ts, ms, 0, count)
        hi = bisect.bisect_right(self.ts, ms, lo, count)
        for index in range(lo, hi):
            start = self.offsets[index] + 4  # frames start with "id: " when emit_ids is set
            if self.buf[start : start + len(needle)] == needle:
                return index
        return None
