"""Opening the analytics copy for a command: refresh with progress, errors as ``Error:`` lines."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from queries import api
from queries.copy import AnalyticsCopy, RefreshResult
from queries.session import QueryError

from .errors import CliError, reported
from .options import check_db_url
from .progress import progress_for


def open_copy(db_url: str, analytics_dir: Path | None, refresh: bool) -> AnalyticsCopy:
    """The copy for ``db_url``, refreshed unless told not to."""
    check_db_url(db_url)
    progress = progress_for("Refreshing the analytics copy", refresh)
    try:
        with reported():
            try:
                opened = api.open_copy(db_url, analytics_dir, refresh, progress=progress)
            except api.NoCopyYet as exc:
                raise CliError(
                    f"{exc}: run without --no-refresh (or `grantex-archive refresh`)"
                ) from None
    finally:
        if progress is not None:
            progress.done()
    if opened.refreshed is not None:
        note_wait(opened.refreshed)
    return opened.copy


def refresh_copy(copy: AnalyticsCopy, full: bool = False) -> RefreshResult:
    """Refresh ``copy`` (rebuild it with ``full``), with progress on a terminal."""
    progress = progress_for("Refreshing the analytics copy")
    try:
        with reported():
            result = copy.refresh(full=full, progress=progress)
    finally:
        if progress is not None:
            progress.done()
    note_wait(result)
    return result


def note_wait(result: RefreshResult) -> None:
    if result.waited:
        click.echo(
            "Note: another process is refreshing the analytics copy; "
            f"using it as of {result.manifest.refreshed_at}",
            err=True,
        )


@contextmanager
def query_errors() -> Iterator[None]:
    """DuckDB and SQL errors become ``Error:`` lines (exit 1)."""
    try:
        yield
    except QueryError as exc:
        raise CliError(str(exc)) from None


def emit(
    copy: AnalyticsCopy, sql: str, params: dict[str, Any], fmt: str | None, output: str | None
) -> None:
    """Print or write a query's rows (see :func:`queries.api.emit`)."""
    with query_errors():
        api.emit(copy, sql, params, fmt, output)
