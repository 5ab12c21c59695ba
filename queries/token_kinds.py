"""Which kind of issuance a ``token.issued`` event was: exchange, delegation or refresh.

The live service sends no ``method``. It makes a grant's id and its first
token's id back to back (``grnt_<ULID>``, ``tok_<ULID>``), so the two ULIDs
carry the same millisecond, give or take one; a refresh makes a new token id
for an existing grant, seconds or days later. The 48-bit time at the head of
each ULID therefore tells the two apart whatever order the events arrive in
and whatever the archive missed before. An initial token is a delegation
when its grant has a parent (``parentGrantId`` on its ``grant.created``),
else a code exchange. A ``method`` field (documented producers) wins.

:func:`token_kind` is the rule in Python, the reference the SQL is tested
against; :func:`lag_sql` is the expression the analytics copy stores per
``token.issued`` row (``token_lag_ms``) and :func:`kind_sql` the one the
``tokens`` view applies to it.
"""

from __future__ import annotations

import re

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
INITIAL_WINDOW_MS = 5
"""A token whose ULID time is within this many ms of its grant's is the grant's first."""

KINDS = ("exchange", "delegation", "refresh", "unknown")
_METHODS = frozenset({"exchange", "delegation", "refresh"})
_ULID = re.compile(r"_([0-7][0-9A-HJKMNP-TV-Z]{25})$", re.IGNORECASE)


def ulid_ms(identifier: str | None) -> int | None:
    """The millisecond time of the ULID after the last ``_`` of ``identifier``, else None."""
    if identifier is None:
        return None
    match = _ULID.search(identifier)
    if match is None:
        return None
    value = 0
    for ch in match.group(1)[:10].upper():
        value = value * 32 + CROCKFORD.index(ch)
    return value


def token_lag_ms(token_id: str | None, grant_id: str | None) -> int | None:
    """Token time minus grant time in ms, from their ULIDs; None when either is not one."""
    token, grant = ulid_ms(token_id), ulid_ms(grant_id)
    if token is None or grant is None:
        return None
    return token - grant


def token_kind(method: str | None, lag_ms: int | None, has_parent: bool) -> str:
    """``exchange``, ``delegation``, ``refresh`` or ``unknown`` for one token.issued."""
    if method in _METHODS:
        return method
    if lag_ms is None or lag_ms < -INITIAL_WINDOW_MS:
        return "unknown"
    if lag_ms <= INITIAL_WINDOW_MS:
        return "delegation" if has_parent else "exchange"
    return "refresh"


def _ms_sql(column: str) -> str:
    """The ULID time of ``column`` in DuckDB SQL (NULL when it does not end in a ULID)."""
    # Ten Crockford digits, most significant first, read in place: plain
    # arithmetic is far cheaper per row than building and reducing a list.
    digits = " + ".join(
        f"(instr('{CROCKFORD}', upper(substr({column}, length({column}) - {25 - i}, 1))) - 1)"
        f" * {32 ** (9 - i)}"
        for i in range(10)
    )
    return (
        f"CASE WHEN regexp_matches({column}, '_[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{{25}}$') "
        f"THEN CAST({digits} AS BIGINT) END"
    )


def lag_sql(token: str = "token_id", grant: str = "grant_id") -> str:
    """DuckDB SQL for :func:`token_lag_ms` over two columns."""
    return f"({_ms_sql(token)} - {_ms_sql(grant)})"


def kind_sql(method: str, lag: str, has_parent: str) -> str:
    """DuckDB SQL for :func:`token_kind` over a method, a lag and a has-parent expression."""
    window = INITIAL_WINDOW_MS
    return (
        f"CASE WHEN {method} IN ('exchange', 'delegation', 'refresh') THEN {method} "
        f"WHEN {lag} IS NULL OR {lag} < -{window} THEN 'unknown' "
        f"WHEN {lag} <= {window} THEN CASE WHEN {has_parent} THEN 'delegation' "
        "ELSE 'exchange' END "
        "ELSE 'refresh' END"
    )
