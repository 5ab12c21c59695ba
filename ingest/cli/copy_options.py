"""The options of the commands that read the analytics copy and print rows.

Apart from :mod:`.options` so that the commands that never read the copy (``ingest``,
``receive``, ``reconcile``) do not import it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click

from queries.copy import ENV_ANALYTICS_DIR
from queries.render import (
    FORMATS,
    FormatConflict,
    OutputError,
    check_destination,
    output_format,
)

from .options import db_option

F = TypeVar("F", bound=Callable[..., Any])


def copy_location_options(func: F) -> F:
    """``--db`` and ``--analytics-dir``: which archive, and where its copy lives."""
    func = click.option(
        "--analytics-dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=ENV_ANALYTICS_DIR,
        default=None,
        help=f"Where the analytics copy lives [default: beside a SQLite archive] "
        f"(env {ENV_ANALYTICS_DIR}).",
    )(func)
    return db_option(func)


def copy_options(func: F) -> F:
    """The copy's location, and ``--no-refresh`` for commands that refresh it first."""
    func = click.option(
        "--no-refresh",
        is_flag=True,
        help="Use the analytics copy as it is, without bringing it up to the archive first.",
    )(func)
    return copy_location_options(func)


def output_options(func: F) -> F:
    """``--format`` and ``-o/--output``, shared by every command that prints rows.

    The command receives the format already chosen (never None), and FILE has
    been checked: a format the suffix contradicts is a usage error (exit 2), a
    FILE that cannot be written one ``Error:`` line (exit 1), before any work.
    """

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        output = kwargs["output"]
        try:
            kwargs["fmt"] = output_format(kwargs["fmt"], output)
        except FormatConflict as exc:
            raise click.UsageError(str(exc)) from None
        try:
            check_destination(output)
            return func(*args, **kwargs)
        except OutputError as exc:
            raise click.ClickException(str(exc)) from None

    wrapped = click.option(
        "-o",
        "--output",
        type=click.Path(dir_okay=False, writable=True, allow_dash=True),
        default=None,
        metavar="FILE",
        help="Write rows to FILE instead of standard output (format from its suffix: "
        ".csv .json .jsonl .md .txt).",
    )(checked)
    wrapped = click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default=None,
        help="Output format [default: from FILE's suffix; on standard output a table on "
        "a terminal, CSV otherwise].",
    )(wrapped)
    return cast(F, wrapped)
