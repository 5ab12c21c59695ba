"""The canonical forms of the hash chain: rows, keys and links as bytes. Pure.

``docs/integrity.md`` defines each form for an auditor who re-implements the
check; this module is its reference implementation, and the two must agree.

Every form is a sequence of *netstrings*: a field's UTF-8 bytes ``b``
written as ``<len(b) in decimal ASCII>:<b>,``. A netstring carries its own
length, so no two different field lists share an encoding, whatever the
fields hold (newlines, commas, colons).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

LINK_FORMAT = "grantex-archive/link/v1"
"""The first field of every link's canonical form: the version of these rules."""

GENESIS = "0" * 64
"""The ``prev`` of the first link."""

KINDS = ("events", "rejected", "runs")
"""What a link covers: rows of ``events`` (by ``seq``), ``rejected_events`` (by ``id``) or
final ``ingest_runs`` records (by ``id``)."""

ROW_TAGS = {"events": "event", "rejected": "rejected", "runs": "run"}
"""The first field of a row's canonical form, per kind: a row of one table never hashes
as a row of another."""

FIELDS = {
    # The row as stored, and the columns derived from its payload (reports read them).
    "events": (
        "seq", "id", "source", "type", "occurred_at", "received_at", "channel", "payload",
        "grant_id", "agent_id", "principal_id", "revoked_by", "token_id", "method",
        "percentage", "remaining", "initial",
    ),
    # All but the counters a repeat of the frame updates (repeats, last_received_at).
    "rejected": (
        "id", "source", "received_at", "reason", "raw", "raw_length", "event_id", "run_id",
        "raw_sha256",
    ),
    "runs": (
        "id", "source", "started_at", "finished_at", "since_requested", "types", "base_url",
        "received", "inserted", "duplicates", "rejected", "reconnects", "first_occurred_at",
        "last_occurred_at", "outcome", "exit_code", "error",
    ),
}  # fmt: skip
"""Per kind, the sealed columns in canonical order; the first is the row's key."""

TIME_FIELDS = frozenset(
    ("occurred_at", "received_at", "started_at", "finished_at", "since_requested",
     "first_occurred_at", "last_occurred_at")
)  # fmt: skip
"""The columns that hold times (canonical form: :func:`timestamp`)."""

_TIME_POSITIONS = {
    kind: frozenset(i for i, name in enumerate(names) if name in TIME_FIELDS)
    for kind, names in FIELDS.items()
}


def netstring(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    return b"%d:%s," % (len(data), data)


def timestamp(value: datetime | str) -> str:
    """A stored time in the canonical form ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (UTC).

    A naive time (as SQLite returns it) is UTC.
    """
    if isinstance(value, str):
        if len(value) == 26 and value[10] == " " and value[19] == ".":
            # SQLite's own text form, 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC): rearranged as is.
            return f"{value[:10]}T{value[11:]}Z"
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    elif value.utcoffset():
        value = value.astimezone(timezone.utc)
    # isoformat (C code) then the zone as Z: the same text as a strftime, in a tenth of the time.
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def text(value: object) -> str:
    """A value's canonical text: integers in decimal, text as itself, a float as the 16
    lowercase hex digits of its IEEE 754 binary64 bits, big-endian."""
    if isinstance(value, float):
        return struct.pack(">d", value).hex()
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"no canonical form for {type(value).__name__}")
    return str(value)


NULL = b"~"
"""A NULL field: one ``~``, never the start of a netstring (which starts with a digit), so
NULL and the empty string differ."""


def row_digest(kind: str, fields: Sequence[object]) -> bytes:
    """SHA-256 of a row's canonical form: its tag, then its ``FIELDS[kind]`` in order."""
    times = _TIME_POSITIONS[kind]
    parts = [netstring(ROW_TAGS[kind])]
    for i, value in enumerate(fields):
        if value is None:
            parts.append(NULL)
            continue
        form = timestamp(value) if i in times else text(value)  # type: ignore[arg-type]
        parts.append(netstring(form))
    return hashlib.sha256(b"".join(parts)).digest()


def event_digest(
    seq: int,
    event_id: str,
    source: str,
    type_: str,
    occurred_at: datetime | str,
    received_at: datetime | str,
    channel: str,
    payload: str,
    *derived: str | float | None,
) -> bytes:
    """The digest of one ``events`` row (the hot path: no generic handling of the first
    eight fields, which are never NULL)."""
    ident = event_id.encode()
    src = source.encode()
    kind = type_.encode()
    body = payload.encode()
    chan = channel.encode()
    occurred = _time_bytes(occurred_at)
    received = _time_bytes(received_at)
    number = str(seq)
    form = _EVENT_FORM % (
        len(number), number.encode(), len(ident), ident, len(src), src, len(kind), kind,
        len(occurred), occurred, len(received), received, len(chan), chan, len(body), body,
    )  # fmt: skip
    # The derived fields, mostly NULL: one branch each and no call for the usual types.
    rest = [
        NULL
        if value is None
        else b"16:%b," % _pack(value).hex().encode()
        if type(value) is float
        else b"%d:%b," % (len(data := value.encode()), data)
        if type(value) is str
        else netstring(text(value))
        for value in derived
    ]
    return _sha256(form + b"".join(rest)).digest()


def _time_bytes(value: datetime | str) -> bytes:
    """:func:`timestamp` as bytes, SQLite's text form rearranged without a call to it."""
    if type(value) is str and len(value) == 26 and value[10] == " " and value[19] == ".":
        return b"%bT%bZ" % (value[:10].encode(), value[11:].encode())
    return timestamp(value).encode()


_EVENT_FORM = b"5:event," + b"%d:%b," * 8
"""The netstrings of an event's first eight fields in one formatting operation."""

_pack = struct.Struct(">d").pack
_sha256 = hashlib.sha256


# -- keys ----------------------------------------------------------------------


def encode_keys(keys: Iterable[int]) -> str:
    """Ascending distinct keys as ranges: ``1-3,5,7-9`` (the order of a link's digests)."""
    if isinstance(keys, range) and keys.step == 1:
        return _span(keys.start, keys.stop - 1) if keys else ""
    out: list[str] = []
    start = prev = None
    for key in keys:
        if prev is not None and key <= prev:
            raise ValueError(f"keys must ascend: {key} after {prev}")
        if start is None:
            start = prev = key
            continue
        assert prev is not None
        if key == prev + 1:
            prev = key
            continue
        out.append(_span(start, prev))
        start = prev = key
    if start is not None and prev is not None:
        out.append(_span(start, prev))
    return ",".join(out)


def _span(start: int, end: int) -> str:
    return str(start) if start == end else f"{start}-{end}"


def decode_keys(encoded: str) -> Iterator[int]:
    """The keys of :func:`encode_keys`, ascending."""
    if not encoded:
        return
    for part in encoded.split(","):
        first, _, last = part.partition("-")
        lo = int(first)
        hi = int(last) if last else lo
        yield from range(lo, hi + 1)


def key_spans(encoded: str) -> list[tuple[int, int]]:
    """The ranges of :func:`encode_keys` as ``(first, last)`` pairs."""
    spans = []
    for part in encoded.split(",") if encoded else ():
        first, _, last = part.partition("-")
        spans.append((int(first), int(last) if last else int(first)))
    return spans


# -- links ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """One link of the chain: the rows one transaction sealed, and its place in the chain."""

    n: int
    kind: str
    prev: str
    keys: str
    count: int
    digests: bytes
    created_at: datetime | str

    def canonical(self) -> bytes:
        return b"".join(
            netstring(field)
            for field in (
                LINK_FORMAT,
                str(self.n),
                self.kind,
                self.prev,
                self.keys,
                str(self.count),
                self.digests,
                timestamp(self.created_at),
            )
        )

    def hash(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def row_digests(self) -> list[bytes]:
        data = self.digests
        return [data[i : i + 32] for i in range(0, len(data), 32)]
