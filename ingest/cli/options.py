"""Options and checks that several commands share."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ..events import MAX_TEXT
from ..settings import DEFAULT_BASE_URL, DEFAULT_DB, ENV_BASE_URL, ENV_DB
from ..store import DatabaseURLError, check_sqlite_location, create_archive_engine
from ..timestamps import TIME_OPTION_HELP, TimestampError, parse_time_option
from .errors import EXIT_USAGE, CliError

F = TypeVar("F", bound=Callable[..., Any])


def db_option(func: F) -> F:
    """``--db URL`` (env ``GRANTEX_ARCHIVE_DB``): the archive."""
    return click.option(
        "--db",
        "db_url",
        envvar=ENV_DB,
        default=DEFAULT_DB,
        show_default=True,
        metavar="URL",
        help=f"Archive database as an SQLAlchemy URL (env {ENV_DB}).",
    )(func)


def parse_time(value: str | None, flag: str) -> datetime | None:
    """A ``--since``/``--until`` value: an ISO 8601 date or timestamp, UTC if no offset."""
    if value is None:
        return None
    try:
        return parse_time_option(value)
    except TimestampError:
        raise click.BadParameter(
            f"{value!r} is not {TIME_OPTION_HELP}", param_hint=f"'{flag}'"
        ) from None


def check_window(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and until <= since:
        raise click.BadParameter("must be later than --since", param_hint="'--until'")


def positive(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A click callback: the value, if given, must be greater than 0."""
    if value is not None and value <= 0:
        raise click.BadParameter("must be greater than 0", param=param)
    return value


def check_db_url(url: str, creates: bool = False) -> None:
    """Refuse a URL this tool cannot use; with ``creates``, also a SQLite file it cannot create.

    A mistyped path must not quietly become a new directory tree and an
    empty archive, so the directory of a SQLite archive has to exist.
    """
    try:
        create_archive_engine(url).dispose()
        if creates:
            check_sqlite_location(url)
    except DatabaseURLError as exc:
        raise CliError(f"{exc} (from --db/{ENV_DB})", EXIT_USAGE) from None


def check_source(_ctx: click.Context, _param: click.Parameter, source: str) -> str:
    """The --source callback: a label that is not blank and fits the archive's column."""
    if not source.strip():
        raise click.BadParameter("must not be empty", param_hint="'--source'")
    if len(source) > MAX_TEXT:
        raise click.BadParameter(
            f"must be at most {MAX_TEXT} characters (it is stored beside every event)",
            param_hint="'--source'",
        )
    return source


def service_options(func: F) -> F:
    """``--api-key-file`` and ``--base-url``: which Grantex account, and where it is served."""
    func = click.option(
        "--base-url",
        envvar=ENV_BASE_URL,
        default=DEFAULT_BASE_URL,
        show_default=True,
        help=f"Grantex API base URL (env {ENV_BASE_URL}).",
    )(func)
    return click.option(
        "--api-key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="File holding the API key (default: env GRANTEX_API_KEY). Never pass the key itself.",
    )(func)


def source_option(func: F) -> F:
    """``--source``: the account's label, checked by :func:`check_source`."""
    return click.option(
        "--source",
        default="default",
        show_default=True,
        callback=check_source,
        help="Label for this account.",
    )(func)


def log_options(func: F) -> F:
    """``--log-format`` and ``-q/--quiet``: how a long-running command logs on stderr."""
    func = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")(func)
    return click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log line format on stderr.",
    )(func)


def digest_options(func: F) -> F:
    """``--digest-dir`` and ``--signing-key``: where a command that writes links leaves
    digest files of the chain head, and the Ed25519 key that signs them."""
    func = click.option(
        "--signing-key",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Ed25519 private key (PEM) that signs the digest files; needs --digest-dir.",
    )(func)
    return click.option(
        "--digest-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Write digest files of the hash chain's head here (at the end and hourly); "
        "keep it apart from the database (another host, WORM storage).",
    )(func)


@contextlib.contextmanager
def digests_written(
    db_url: str, digest_dir: Path | None, signing_key: Path | None
) -> Iterator[None]:
    """Write digest files while the block runs and when it ends (when --digest-dir is set).

    The directory and key are checked before anything runs: a bad one is a usage error.
    """
    if digest_dir is None:
        if signing_key is not None:
            raise CliError("--signing-key needs --digest-dir", EXIT_USAGE)
        yield
        return
    from ..seal.digests import DigestError, DigestWriter, check_directory, load_private_key

    try:
        check_directory(digest_dir)
        key = load_private_key(signing_key) if signing_key is not None else None
    except DigestError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    engine = create_archive_engine(db_url)
    try:
        with DigestWriter(engine, digest_dir, key):
            yield
    finally:
        engine.dispose()
