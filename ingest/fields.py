"""The identifier and number fields an event's ``data`` gives its columns.

An identifier (``grantId``, ``principalId`` ...) is text of at most
:data:`MAX_TEXT` characters, or an integer as text; a number is a float from
a number or a numeric string. A value no column can take raises
:class:`Unstorable`, and the frame goes to ``rejected_events``.
"""

from __future__ import annotations

import math
from typing import Any

MAX_TEXT = 255
"""The longest id, type or identifier (``grantId`` ...) that is archived, in characters.

The columns are ``VARCHAR(255)`` on PostgreSQL; SQLite would take any
length. Enforcing the limit here makes both stores accept the same events;
a longer value sends the frame to ``rejected_events``.
"""


def storable(value: str) -> bool:
    # PostgreSQL text cannot hold NUL, and no database takes unpaired
    # surrogates (which JSON escapes like "\ud800" can produce).
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Unstorable(ValueError):
    """A ``data`` field holds a value no column can take: the frame is rejected."""


class TooLong(Unstorable):
    """An identifier longer than :data:`MAX_TEXT`."""


class OutOfRange(Unstorable):
    """A field the store holds as a number is beyond what a float can hold."""


def text_field(value: Any) -> str | None:
    """An identifier column's value: text (or an integer as text), else None.

    Raises :class:`TooLong` past :data:`MAX_TEXT` characters.
    """
    if value is None:  # the usual absent field, settled first
        return None
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise TooLong(value)
        return value if value and storable(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
        if len(text) > MAX_TEXT:
            raise TooLong(text)
        return text
    return None


def number_field(value: Any) -> float | None:
    """A float from a number or a numeric string; None for anything else (and NaN).

    Raises :class:`OutOfRange` for a number too large for a float (``1e400``,
    a 400-digit integer), which no database column can hold.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                return None
        else:
            return None
    except OverflowError:
        raise OutOfRange(value) from None
    if math.isinf(number):
        raise OutOfRange(value)
    return None if math.isnan(number) else number


# In the order they are read; the person is looked for under three names.
TEXT_KEYS = (
    "grantId",
    "agentId",
    "principalId",
    "revokedBy",
    "tokenId",
    "method",
    "userId",
    "dataPrincipalId",
)


def shorten(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
