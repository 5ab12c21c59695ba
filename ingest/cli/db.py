"""``grantex-archive db``: create, inspect and migrate the archive's schema."""

from __future__ import annotations

import sys

import click
import sqlalchemy as sa

from ..database import first_line
from ..store import Store, create_archive_engine, safe_url, sqlite_path
from .errors import EXIT_DATABASE, EXIT_USAGE, CliError
from .options import check_db_url, db_option


@click.group()
def db() -> None:
    """Create and migrate the archive's schema.

    \b
    Example:
      grantex-archive db upgrade && grantex-archive db current
    """


@db.command("upgrade")
@db_option
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(db_url: str, revision: str) -> None:
    """Migrate the archive to the newest schema (creating a SQLite file if needed).

    \b
    Example:
      grantex-archive db upgrade --db postgresql+psycopg://archiver@db/grantex
    """
    from .. import migrate  # Alembic loads only for the commands that need it

    check_db_url(db_url, creates=True)
    try:
        migrate.upgrade(db_url, revision)
        engine = Store.open(db_url).engine
        state = migrate.schema_state(engine)
        engine.dispose()
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise CliError(f"database unusable: {first_line(exc)}", EXIT_DATABASE) from None
    except sa.exc.DBAPIError as exc:
        raise CliError(_not_an_archive(db_url, exc), EXIT_DATABASE) from None
    click.echo(f"{safe_url(db_url)}: at revision {state.current} (head)")


@db.command("current")
@db_option
def db_current(db_url: str) -> None:
    """Show the archive's schema revision and whether it is the newest.

    Exits 0 at head, 1 when behind (run `grantex-archive db upgrade`), 4 when
    the database cannot be reached.

    \b
    Example:
      grantex-archive db current
    """
    from .. import migrate  # Alembic loads only for the commands that need it

    check_db_url(db_url)
    path = sqlite_path(db_url)
    if path is not None and not path.exists():
        raise CliError(f"no archive at {path}: run `grantex-archive db upgrade`", 1)
    engine = Store.open(db_url).engine
    try:
        state = migrate.schema_state(engine)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise CliError(f"database unusable: {first_line(exc)}", EXIT_DATABASE) from None
    except sa.exc.DBAPIError as exc:
        raise CliError(_not_an_archive(db_url, exc), EXIT_DATABASE) from None
    finally:
        engine.dispose()
    if state.at_head:
        click.echo(f"{state.current} (head)")
        return
    click.echo(f"{state.current or 'none'} (head is {state.head})")
    raise CliError("the archive is behind: run `grantex-archive db upgrade`", 1)


@db.command("downgrade")
@db_option
@click.argument("revision")
@click.option(
    "--yes",
    is_flag=True,
    help="Confirm: drop the tables and columns newer than REVISION, with their data.",
)
def db_downgrade(db_url: str, revision: str, yes: bool) -> None:
    """Migrate the archive back to REVISION (`base` drops every table and event).

    Asks for confirmation on a terminal; elsewhere needs --yes.

    \b
    Example:
      grantex-archive db downgrade 0001 --yes
    """
    from .. import migrate  # Alembic loads only for the commands that need it

    check_db_url(db_url)
    path = sqlite_path(db_url)
    if path is not None and not path.exists():
        raise CliError(f"no archive at {path}", 1)
    try:
        held = _archived_counts(db_url)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise CliError(f"database unusable: {first_line(exc)}", EXIT_DATABASE) from None
    except sa.exc.DBAPIError as exc:
        raise CliError(_not_an_archive(db_url, exc), EXIT_DATABASE) from None
    if revision == "base":
        loss = (
            f"drops every table of {safe_url(db_url)}: {_count(held, 'events', 'event')}, "
            f"{_count(held, 'rejected_events', 'rejected frame')} and "
            f"{_count(held, 'ingest_runs', 'run record')}"
        )
    else:
        loss = (
            f"drops what the migrations after {revision} added to {safe_url(db_url)} "
            f"(the {_count(held, 'events', 'event')} stay)"
        )
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise CliError(f"not downgraded: this {loss}; pass --yes to confirm", EXIT_USAGE)
        click.echo(f"This {loss}.")
        answer = click.prompt("Type 'downgrade' to go on", default="", show_default=False)
        if answer.strip() != "downgrade":
            raise CliError("not downgraded", 1)
    try:
        migrate.downgrade(db_url, revision)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise CliError(f"database unusable: {first_line(exc)}", EXIT_DATABASE) from None
    click.echo(f"{safe_url(db_url)}: downgraded to {revision}")


def _count(held: dict[str, int], table: str, noun: str) -> str:
    number = held.get(table, 0)
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _archived_counts(db_url: str) -> dict[str, int]:
    """Rows in each of the archive's tables that exist."""
    engine = create_archive_engine(db_url)
    try:
        with engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names())
            return {
                table: int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() or 0)
                for table in ("events", "rejected_events", "ingest_runs")
                if table in present
            }
    finally:
        engine.dispose()


def _not_an_archive(db_url: str, exc: sa.exc.DBAPIError) -> str:
    where = sqlite_path(db_url) or safe_url(db_url)
    return f"{where} is not a usable archive: {first_line(exc)}"
