"""Exit codes: the one table from library exception and ingest outcome to exit code.

Library code raises its own typed errors and returns outcomes; only the
command line turns them into exit codes and one-line ``Error:`` messages.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..settings import ConfigError
from ..store import DatabaseURLError, LockHeld, StoreError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_STALE = 1
"""``status --max-age``: no successful ingest recently enough."""
EXIT_USAGE = 2
"""Bad usage or configuration (click uses 2 for usage errors too)."""
EXIT_AUTH = 3
EXIT_DATABASE = 4
EXIT_UNAVAILABLE = 69
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 130
"""128 + SIGINT, as shells report a Ctrl-C."""

EXIT_CODES: dict[str, int] = {
    "idle": EXIT_OK,
    "max_runtime": EXIT_OK,
    "max_events": EXIT_OK,
    "interrupted": EXIT_OK,
    "handed_over": EXIT_OK,
    "locked": EXIT_LOCKED,
    "failed": EXIT_FAILED,
    "endpoint_error": EXIT_USAGE,
    "auth_failed": EXIT_AUTH,
    "database_error": EXIT_DATABASE,
    "unreachable": EXIT_UNAVAILABLE,
}
"""The exit code of each ingest outcome (``ingest --help`` lists them)."""

ERROR_EXITS: tuple[tuple[type[BaseException], int], ...] = (
    (LockHeld, EXIT_LOCKED),
    (ConfigError, EXIT_USAGE),
    (DatabaseURLError, EXIT_USAGE),
    (StoreError, EXIT_DATABASE),
)
"""The exit code of each library error of ``ingest``; the first entry that matches wins.
The analytics copy's errors follow (:func:`error_exits`)."""

ANALYTICS_ERRORS = "queries.copy.errors"


def error_exits() -> tuple[tuple[type[BaseException], int], ...]:
    """``ERROR_EXITS``, then the analytics copy's errors when its module is loaded: a
    command that never loaded it (``ingest``, run every minute by cron) cannot meet them,
    and does not pay for importing DuckDB."""
    analytics = sys.modules.get(ANALYTICS_ERRORS)
    if analytics is None:
        return ERROR_EXITS
    return (
        *ERROR_EXITS,
        (analytics.ArchiveUnavailable, EXIT_DATABASE),
        (analytics.ArchiveSchemaError, EXIT_DATABASE),
        (analytics.AnalyticsError, EXIT_FAILED),
    )


class CliError(click.ClickException):
    """An ``Error:`` line and a chosen exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code :func:`error_exits` gives ``exc``; None when it is not a library error."""
    for kind, code in error_exits():
        if isinstance(exc, kind):
            return code
    return None


@contextmanager
def reported() -> Iterator[None]:
    """Turn the library errors of :func:`error_exits` into ``Error:`` lines with their exit
    codes."""
    try:
        yield
    except Exception as exc:
        code = exit_code_for(exc)
        if code is None:
            raise
        raise CliError(str(exc), code) from None
