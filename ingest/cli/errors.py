"""Exit codes: the one table from library exception and ingest outcome to exit code.

Library code raises its own typed errors and returns outcomes; only the
command line turns them into exit codes and one-line ``Error:`` messages.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from queries.copy import AnalyticsError, ArchiveSchemaError, ArchiveUnavailable

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
    (ArchiveUnavailable, EXIT_DATABASE),
    (ArchiveSchemaError, EXIT_DATABASE),
    (AnalyticsError, EXIT_FAILED),
)
"""The exit code of each library error; the first entry that matches wins."""


class CliError(click.ClickException):
    """An ``Error:`` line and a chosen exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]


def exit_code_for(exc: BaseException) -> int | None:
    """The exit code ``ERROR_EXITS`` gives ``exc``; None when it is not a library error."""
    for kind, code in ERROR_EXITS:
        if isinstance(exc, kind):
            return code
    return None


@contextmanager
def reported() -> Iterator[None]:
    """Turn the library errors in ``ERROR_EXITS`` into ``Error:`` lines with their exit codes."""
    try:
        yield
    except tuple(kind for kind, _code in ERROR_EXITS) as exc:
        code = exit_code_for(exc)
        assert code is not None
        raise CliError(str(exc), code) from None
