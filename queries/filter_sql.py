"""The time window and the agent filter as SQL, defined once for the reports and the exports.

Report files name them as placeholders, expanded when a report is loaded
(:func:`expand`, called by ``queries.reports``)::

    {window(occurred_at)}                  occurred_at in [$since, $until)
    {window(first_at, last_at)}            first_at >= $since and last_at < $until
    {overlaps(first_at, last_at)}          the span [first_at, last_at] meets the window
    {agent_events}                         the event names $agent or is about its grants

``queries.export.Filters.where`` builds its clause from the same functions.
A NULL bound is no bound. DuckDB substitutes the parameters' values before it
plans, so ``$since IS NULL OR ...`` folds away and a given bound still reaches
the Parquet scan as a filter that skips row groups.
"""

from __future__ import annotations

import re
from collections.abc import Callable


class PlaceholderError(ValueError):
    """A report names a placeholder that does not exist, or gives it the wrong arguments."""


def window(
    first: str, last: str | None = None, since: str = "$since", until: str = "$until"
) -> str:
    """``first`` (and ``last``, when given, else ``first`` again) inside [since, until)."""
    last = first if last is None else last
    return f"(({since} IS NULL OR {first} >= {since}) AND ({until} IS NULL OR {last} < {until}))"


def overlaps(first: str, last: str, since: str = "$since", until: str = "$until") -> str:
    """The span [``first``, ``last``] meets [since, until)."""
    return f"(({since} IS NULL OR {last} >= {since}) AND ({until} IS NULL OR {first} < {until}))"


def owned_by(column: str, value: str) -> str:
    """Events whose ``column`` (agent_id, principal_id) is ``value``, or about its grants.

    An agent's or principal's events include those about its grants that do
    not name it (grant.revoked, budget events).
    """
    return (
        f"({column} = {value} OR grant_id IN "
        f"(SELECT grant_id FROM grants WHERE {column} = {value}))"
    )


PLACEHOLDERS: dict[str, Callable[..., str]] = {
    "window": window,
    "overlaps": overlaps,
    "agent_events": lambda: owned_by("agent_id", "$agent"),
}

# {name} or {name(arguments)}; the arguments may hold parentheses of their own.
_PLACEHOLDER = re.compile(r"\{(\w+)(?:\((.*?)\))?\}", re.S)


def _arguments(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses, each part stripped."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def expand(sql: str) -> str:
    """``sql`` with every placeholder replaced by its SQL; PlaceholderError for a bad one."""

    def one(match: re.Match[str]) -> str:
        name, given = match.group(1), match.group(2)
        if name not in PLACEHOLDERS:
            raise PlaceholderError(f"unknown placeholder {{{name}}}")
        try:
            return PLACEHOLDERS[name](*_arguments(given or ""))
        except TypeError:
            raise PlaceholderError(f"wrong arguments for {match.group(0)}") from None

    return _PLACEHOLDER.sub(one, sql)
