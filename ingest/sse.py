"""Bytes to SSE frames, with no I/O.

httpx-sse owns the framing rules (line endings, fields, comments, ``id``
persistence); this module feeds it text decoded from raw bytes so that the
archive can still tell invalid UTF-8 and a byte-order mark apart, and bounds
the memory one frame may take.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from .events import MAX_FRAME_BYTES, RAW_CAP

_BOM = "\ufeff"
DISCARD_LIMIT = 8 * MAX_FRAME_BYTES
"""A frame still growing past this is cut off and skipped to its end."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One dispatched SSE frame with data.

    ``data`` holds undecodable bytes as surrogate escapes. ``truncated_length``
    is set when the frame was too large to keep whole: ``data`` then holds its
    head only.
    """

    data: str
    event: str = ""
    id: str = ""
    truncated_length: int | None = None


@dataclass(frozen=True, slots=True)
class Control:
    """A frame without data: only ``id:`` or ``retry:`` fields."""

    id: str = ""
    retry: int | None = None


class FrameDecoder:
    """Incremental decoder: feed byte chunks, get :class:`Frame` and :class:`Control` items."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._lines = SSELineDecoder()
        self._sse = SSEDecoder()
        self._started = False
        self._pending = 0
        self._discarding: tuple[str, int] | None = None
        self._skip_lf = False
        self.last_event_id = ""
        self.retry: int | None = None

    def feed(self, chunk: bytes) -> list[Frame | Control]:
        text = self._text.decode(chunk)
        if not self._started:
            if not text:
                return []
            self._started = True
            if text.startswith(_BOM):
                text = text[1:]
        # A CR ends a line at once (no waiting for the next chunk to see
        # whether an LF follows); an LF right after it is then skipped.
        if self._skip_lf and text.startswith("\n"):
            text = text[1:]
        if not text:
            return []
        self._skip_lf = text.endswith("\r")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return self._decode(self._lines.decode(text))

    def close(self) -> list[Frame | Control]:
        """End of stream: an unterminated frame is incomplete and is not dispatched."""
        self._text.decode(b"", final=True)
        self._lines.flush()
        self._discarding = None
        return []

    def _decode(self, lines: Iterable[str]) -> list[Frame | Control]:
        out: list[Frame | Control] = []
        for line in lines:
            if self._discarding is not None:
                if line:
                    head, length = self._discarding
                    self._discarding = (head, length + len(line) + 1)
                    continue
                head, length = self._discarding
                self._discarding = None
                self._pending = 0
                self._sse = _carry_state(self._sse)
                out.append(Frame(data=head, truncated_length=length))
                continue
            self._pending += len(line) + 1
            if self._pending > DISCARD_LIMIT:
                self._start_discard(line)
                continue
            sse = self._sse.decode(line)
            if not line:
                self._pending = 0
            if sse is None:
                continue
            self.last_event_id = sse.id
            if sse.retry is not None:
                self.retry = sse.retry
            if sse.data == "":
                out.append(Control(id=sse.id, retry=sse.retry))
            else:
                out.append(Frame(data=sse.data, event=sse.event, id=sse.id))
        self._guard_buffer()
        return out

    def _start_discard(self, line: str) -> None:
        head = "\n".join(self._sse._data)[:RAW_CAP] or _field_value(line)[:RAW_CAP]
        self._discarding = (head, self._pending)

    def _guard_buffer(self) -> None:
        # An unterminated line sits in httpx-sse's line buffer; cap it so a
        # hostile or broken producer cannot grow it without bound.
        buffer = getattr(self._lines, "buffer", None)
        if not buffer:
            return
        size = sum(len(part) for part in buffer)
        if self._pending + size <= DISCARD_LIMIT:
            return
        joined = "".join(buffer)
        if self._discarding is None:
            head = "\n".join(self._sse._data) or _field_value(joined)
            self._discarding = (head[:RAW_CAP], self._pending + size)
        else:
            head, length = self._discarding
            self._discarding = (head, length + size)
        self._lines.buffer = []


def _field_value(line: str) -> str:
    value = line.partition(":")[2]
    return value[1:] if value.startswith(" ") else value


def _carry_state(old: SSEDecoder) -> SSEDecoder:
    fresh = SSEDecoder()
    fresh._last_event_id = old._last_event_id
    return fresh


def decode_all(chunks: Iterable[bytes]) -> Iterator[Frame | Control]:
    """Decode a whole byte stream (for tests and offline replays)."""
    decoder = FrameDecoder()
    for chunk in chunks:
        yield from decoder.feed(chunk)
    yield from decoder.close()
