"""Identifiers and instants as text: ULID-style ids and millisecond UTC timestamps.

This module renders both quickly for the event generator (bulk random symbols, cached
second and millisecond texts) and reads them back for the server: the time part of a
ULID (to find a ``Last-Event-ID``) and the ISO 8601 ``since`` query parameter.
"""

from __future__ import annotations

import calendar
import functools
import random
import re
import time
from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Every two-symbol Crockford string, indexed by its 10-bit value.
PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]
_CROCKFORD_VALUES: dict[str, int] = {}
for _i, _c in enumerate(_CROCKFORD):
    _CROCKFORD_VALUES[_c] = _i
    _CROCKFORD_VALUES[_c.lower()] = _i
# Random bytes -> Crockford symbols in one C-level translate (256 is a multiple of 32, so
# every symbol stays equally likely).
_BYTE_TO_CROCKFORD = bytes(_CROCKFORD.encode("ascii")[b & 31] for b in range(256))
_RANDOM_POOL_CHARS = 16 * 4096
# Formatting "%03d" costs more than everything else in a timestamp; look it up instead.
MILLIS = tuple(f".{i:03d}Z" for i in range(1000))


@functools.lru_cache(maxsize=4096)
def ulid_time_head(head: int) -> str:
    """The first 8 of the 10 ULID time symbols (ms >> 10), which change about once a second."""
    p = PAIRS
    return (
        f"{p[(head >> 30) & 1023]}{p[(head >> 20) & 1023]}{p[(head >> 10) & 1023]}{p[head & 1023]}"
    )


def ulid_ms(text: str) -> int | None:
    """The millisecond timestamp of a 26-symbol ULID, or None if it is not one."""
    if len(text) != 26:
        return None
    value = 0
    for ch in text:
        digit = _CROCKFORD_VALUES.get(ch)
        if digit is None:
            return None
        value = (value << 5) | digit
    if value >> 128:
        return None
    return value >> 80


class UlidSource:
    """ULID-style ids: 48-bit ms time, then 80 random bits from a seeded generator.

    The random symbols are drawn in bulk and sliced off a pool; rendering ids one integer
    at a time was the largest single cost of generating a big backlog.
    """

    __slots__ = ("_rng", "pool", "pos")

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.pool = ""
        self.pos = 0

    def refill(self, size: int = _RANDOM_POOL_CHARS) -> None:
        # Sizes stay multiples of 4 bytes, so the symbol sequence is one continuous stream
        # whatever the refill pattern (randbytes consumes whole 32-bit words).
        raw = self._rng.randbytes(size)
        self.pool = raw.translate(_BYTE_TO_CROCKFORD).decode("ascii")
        self.pos = 0

    def take(self, count: int) -> list[str]:
        """The random parts (16 symbols each) of the next ``count`` ids."""
        need = 16 * count
        pos = self.pos
        if pos + need > len(self.pool):
            rest = self.pool[pos:]
            self.refill(max(_RANDOM_POOL_CHARS, need))
            self.pool = rest + self.pool
            pos = 0
        self.pos = pos + need
        pool = self.pool
        return [pool[i : i + 16] for i in range(pos, pos + need, 16)]

    def __call__(self, ms: int) -> str:
        pos = self.pos
        if pos + 16 > len(self.pool):
            rest = self.pool[pos:]
            self.refill()
            self.pool = rest + self.pool
            pos = 0
        self.pos = pos + 16
        return f"{ulid_time_head(ms >> 10)}{PAIRS[ms & 1023]}{self.pool[pos : pos + 16]}"


def format_ms(ms: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS.mmmZ`` of a Unix millisecond."""
    return second_text(ms // 1000) + MILLIS[ms % 1000]


@functools.lru_cache(maxsize=8192)
def second_text(sec: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of a Unix second; cached, as strftime dominates otherwise."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))


def datetime_to_ms(value: datetime) -> int:
    """Unix milliseconds of ``value``; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - _EPOCH) // timedelta(milliseconds=1)


def ms_to_datetime(ms: int) -> datetime:
    """The aware UTC datetime of a Unix millisecond."""
    return _EPOCH + timedelta(milliseconds=ms)


_SINCE_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)
# An unencoded "+" in a query string arrives as a space; accept "...T12:00:00 05:30".
_SPACE_OFFSET_RE = re.compile(r"(.*[Tt].*\d) (\d{2}(?::?\d{2})?)")


def parse_since_ms(text: str) -> int:
    """Return the smallest whole millisecond >= the instant, so ``ts >= since`` is exact.

    This is the producer's side of ``since``, not the archive's parser
    (``ingest.timestamps``): it rounds up to the millisecond the service
    stores, and takes a ``+`` that arrived unencoded as a space.
    """
    text = text.strip()
    fixed = _SPACE_OFFSET_RE.fullmatch(text)
    if fixed:
        text = f"{fixed.group(1)}+{fixed.group(2)}"
    m = _SINCE_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"not an ISO 8601 timestamp: {text!r}")
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    hour = int(m.group(4) or 0)
    minute = int(m.group(5) or 0)
    second = int(m.group(6) or 0)
    datetime(year, month, day, hour, minute, second)  # range validation only
    offset_s = _offset_seconds(m.group(8))
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset_s
    frac = m.group(7) or ""
    ms = seconds * 1000 + int((frac + "000")[:3])
    if frac[3:].strip("0"):
        ms += 1
    return ms


def _offset_seconds(zone: str | None) -> int:
    """Seconds east of UTC of a ``Z`` / ``+HH:MM`` / ``-HHMM`` / ``+HH`` suffix (none: UTC)."""
    if not zone or zone in ("Z", "z"):
        return 0
    digits = zone[1:].replace(":", "")
    off_h, off_m = int(digits[:2]), int(digits[2:4] or 0)
    if off_h > 23 or off_m > 59:
        raise ValueError(f"bad UTC offset: {zone!r}")
    return (off_h * 3600 + off_m * 60) * (1 if zone[0] == "+" else -1)
