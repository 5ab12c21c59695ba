"""Bytes to SSE frames, with no I/O.

httpx-sse's ``SSEDecoder`` owns the field rules (``data``, ``event``, ``id``,
``retry``, comments, ``id`` persistence). This module feeds it text decoded
from raw bytes, so the archive can still tell invalid UTF-8 and a byte-order
mark apart; splits frames at blank lines with CR, LF and CRLF treated alike;
bounds the memory one frame may take; and takes a shortcut for the frame the
live producer sends (one ``data: <json>`` line), which yields exactly what
``SSEDecoder`` would.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from httpx_sse._decoders import SSEDecoder

from .events import MAX_FRAME_BYTES, RAW_CAP

_BOM = "\ufeff"
DISCARD_LIMIT = 8 * MAX_FRAME_BYTES
"""A frame still growing past this is cut off and skipped to its end."""


class Frame(NamedTuple):
    """One dispatched SSE frame with data.

    ``data`` holds undecodable bytes as surrogate escapes. ``truncated_length``
    is set when the frame was too large to keep whole: ``data`` then holds its
    head only and ``truncated_length`` the frame's size in bytes.
    """

    data: str
    event: str = "message"
    id: str = ""
    truncated_length: int | None = None


class Control(NamedTuple):
    """A frame without data: only ``id:`` or ``retry:`` fields."""

    id: str = ""
    retry: int | None = None


class FrameDecoder:
    """Incremental decoder: feed byte chunks, get :class:`Frame` and :class:`Control` items.

    ``last_event_id`` carries over from an earlier connection, as the SSE
    specification asks of a reconnecting client.
    """

    def __init__(self, last_event_id: str = "") -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self._sse = SSEDecoder()
        self._sse._last_event_id = last_event_id
        self._started = False
        self._skip_lf = False
        # The unterminated end of the stream, kept as pieces so that a large
        # frame arriving in many reads costs linear, not quadratic, time.
        self._pieces: list[str] = []
        self._pending = 0
        self._discarding: tuple[str, int] | None = None
        self.last_event_id = last_event_id
        self.retry: int | None = None

    @property
    def partial(self) -> bool:
        """Whether a frame with fields (not just a comment) has started but not ended."""
        if self._discarding is not None:
            return True
        if not self._pieces:
            return False
        head = self._pieces[0].lstrip("\n")
        return bool(head) and not head.startswith(":")

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
        if self._skip_lf and text:
            self._skip_lf = False
            if text.startswith("\n"):
                text = text[1:]
        if not text:
            return []
        self._skip_lf = text.endswith("\r")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        return self._split(text)

    def close(self) -> list[Frame | Control]:
        """End of stream: an unterminated frame is incomplete and is not dispatched."""
        self._text.decode(b"", final=True)
        self._pieces = []
        self._pending = 0
        self._discarding = None
        return []

    def _split(self, text: str) -> list[Frame | Control]:
        out: list[Frame | Control] = []
        if self._discarding is not None:
            text = self._skip_discarded(text, out)
            if not text:
                return out
        # Only the new text (and the character before it) can hold a new
        # frame boundary.
        before = self._pieces[-1][-1:] if self._pieces else ""
        if (before + text).find("\n\n") < 0:
            self._pieces.append(text)
            self._pending += len(text)
            if self._pending > DISCARD_LIMIT:
                self._start_discard()
            return out
        if self._pieces:
            text = "".join(self._pieces) + text
            self._pieces = []
        boundary = text.rfind("\n\n")
        tail = text[boundary + 2 :]
        self._pieces = [tail] if tail else []
        self._pending = len(tail)
        sse = self._sse
        for block in text[:boundary].split("\n\n"):
            if len(block) > 6 and block.startswith("data: ") and "\n" not in block:
                # The live producer's frame: one data line, nothing else.
                out.append(Frame(block[6:], "message", sse._last_event_id))
                continue
            self._block(block, out)
        if self._pending > DISCARD_LIMIT:
            self._start_discard()
        return out

    def _block(self, block: str, out: list[Frame | Control]) -> None:
        decode = self._sse.decode
        for line in [*block.split("\n"), ""]:
            event = decode(line)
            if event is None:
                continue
            self.last_event_id = event.id
            if event.retry is not None:
                self.retry = event.retry
            if event.data == "":
                out.append(Control(event.id, event.retry))
            else:
                out.append(Frame(event.data, event.event, event.id))

    def _start_discard(self) -> None:
        # Keep the head of the frame's data for the dead-letter row, count
        # the rest in bytes and drop it until the frame ends.
        pending = "".join(self._pieces)
        first_line = pending.lstrip("\n").partition("\n")[0]
        value = first_line.partition(":")[2]
        head = value[1:] if value.startswith(" ") else value
        self._discarding = (head[:RAW_CAP], _byte_length(pending))
        self._pieces = [pending[-1:]]
        self._pending = 1

    def _skip_discarded(self, text: str, out: list[Frame | Control]) -> str:
        """Drop text up to the end of the frame being discarded; return what follows."""
        assert self._discarding is not None
        head, length = self._discarding
        before = self._pieces[-1][-1:] if self._pieces else ""
        end = (before + text).find("\n\n")
        if end < 0:
            self._discarding = (head, length + _byte_length(text))
            self._pieces = [text[-1:]]
            return ""
        cut = end + 2 - len(before)
        self._discarding = None
        self._pieces = []
        self._pending = 0
        self._sse = _carry_state(self._sse)
        out.append(Frame(head, truncated_length=length + _byte_length(text[:cut])))
        return text[cut:]


def _byte_length(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


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
