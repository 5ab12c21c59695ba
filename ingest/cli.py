"""The ``grantex-archive`` command line: ``db``, ``ingest``, ``simulate`` and ``demo``.

Library code raises its own exceptions; this module turns them into exit
codes and one-line ``Error:`` messages with a hint on what to do next.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import select
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from .events import MAX_TEXT
from .help_format import HelpContext, use_help_format
from .logs import setup_logging
from .runner import run_ingest
from .settings import (
    DEFAULT_BASE_URL,
    DEFAULT_DB,
    ENV_BASE_URL,
    ENV_DB,
    ConfigError,
    IngestSettings,
    check_base_url,
    load_api_key,
    parse_types,
)
from .store import (
    DatabaseURLError,
    LockHeld,
    Store,
    StoreError,
    check_sqlite_location,
    create_archive_engine,
    sqlite_path,
)
from .timestamps import TimestampError, format_timestamp, parse_time_option

EXIT_CONFIG = 2
EXIT_DATABASE = 4
EXIT_LOCKED = 75
EXIT_CODES = {
    "idle": 0,
    "max_runtime": 0,
    "max_events": 0,
    "interrupted": 0,
    "failed": 1,
    "endpoint_error": 2,
    "auth_failed": 3,
    "database_error": 4,
    "unreachable": 69,
}
"""The exit code of each ingest outcome (``ingest --help`` lists them)."""

F = TypeVar("F", bound=Callable[..., Any])

# Like a shell: 128 + SIGINT.
EXIT_INTERRUPTED = 130


class CliError(click.ClickException):
    """An ``Error:`` line and a chosen exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]


def db_option(func: F) -> F:
    return click.option(
        "--db",
        "db_url",
        envvar=ENV_DB,
        default=DEFAULT_DB,
        show_default=True,
        metavar="URL",
        help=f"Archive database as an SQLAlchemy URL (env {ENV_DB}).",
    )(func)


def _parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time_option(value)
    except TimestampError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or timestamp (e.g. 2026-03-01 or "
            "2026-03-01T12:00:00Z)",
            param_hint="'--since'",
        ) from None


def _check_db_url(url: str, creates: bool = False) -> None:
    """Refuse a URL this tool cannot use; with ``creates``, also a SQLite file it cannot create.

    A mistyped path must not quietly become a new directory tree and an
    empty archive, so the directory of a SQLite archive has to exist.
    """
    try:
        create_archive_engine(url).dispose()
        if creates:
            check_sqlite_location(url)
    except DatabaseURLError as exc:
        raise CliError(f"{exc} (from --db/{ENV_DB})", EXIT_CONFIG) from None


class RootGroup(click.Group):
    """The root command: ingest's commands here, the analytics ones from ``queries``.

    The analytics commands sit downstream of ingest and import from it, so they
    are added when the command line is read rather than when this module loads.
    """

    _assembled = False
    context_class = HelpContext

    def _assemble(self) -> None:
        if not self._assembled:
            self._assembled = True
            from queries.cli import COMMANDS

            for command in COMMANDS:
                self.add_command(command)
            use_help_format(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._assemble()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._assemble()
        return super().get_command(ctx, cmd_name)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # `--help` and `--version` write while the command line is read.
        with _unix_endings():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _unix_endings():
            result = super().invoke(ctx)
            # Rows still buffered must meet a closed pipe here, not at exit.
            sys.stdout.flush()
            return result

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        finally:
            # An error message left in the buffer for a closed pipe would make
            # the interpreter's last flush fail and print a traceback.
            if _stdout_closed():
                _silence_stdout()


@contextmanager
def _unix_endings() -> Iterator[None]:
    """A closed standard output ends the command quietly (exit 0), Ctrl-C with 130.

    Click would turn both into exit 1 ("Aborted!", or an ``Error:`` line for a
    broken pipe reported through a library error), so they are mapped before
    click sees them.
    """
    try:
        yield
    except (click.exceptions.Exit, SystemExit):
        raise
    except BaseException as exc:
        if _stdout_closed() and _caused_by(exc, _is_broken_pipe):
            # `grantex-archive sql ... | head`: the reader has all it wanted.
            _silence_stdout()
            raise click.exceptions.Exit(0) from None
        if isinstance(exc, click.ClickException):
            # A command that mapped an interrupt to its own message and exit
            # code (export: "nothing was written to PATH") keeps them.
            raise
        if _caused_by(exc, lambda e: isinstance(e, KeyboardInterrupt)):
            click.echo("Interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        raise


def _caused_by(exc: BaseException, test: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` or an exception it was raised from or during passes ``test``.

    Commands report library errors ``from None``; the context still links them.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if test(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _is_broken_pipe(exc: BaseException) -> bool:
    """EPIPE from Python, or as DuckDB reports a write that failed with it."""
    if isinstance(exc, OSError):
        return exc.errno == errno.EPIPE
    return "Broken pipe" in str(exc)


def _stdout_closed() -> bool:
    """Whether standard output is a pipe or socket nobody reads any more."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced (tests) or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        ready = poller.poll(0)
    except OSError:
        return False
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in ready)


def _silence_stdout() -> None:
    """Point standard output at /dev/null so that nothing more fails to be written."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grantex-archive")
def main() -> None:
    """Keep, query and hand over the record of what your Grantex agents were allowed to do.

    \b
    Quick start (a local simulator, no account needed):
      grantex-archive demo
    Archive your account's events until caught up (cron):
      GRANTEX_API_KEY=... grantex-archive ingest --until-idle 60 --max-runtime 3300
    """


# -- db ------------------------------------------------------------------------


@main.group()
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
    from . import migrate  # Alembic loads only for the commands that need it

    _check_db_url(db_url, creates=True)
    try:
        migrate.upgrade(db_url, revision)
        engine = Store.open(db_url).engine
        state = migrate.schema_state(engine)
        engine.dispose()
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise CliError(f"database unusable: {_first_line(exc)}", EXIT_DATABASE) from None
    except sa.exc.DBAPIError as exc:
        raise CliError(_not_an_archive(db_url, exc), EXIT_DATABASE) from None
    click.echo(f"{_safe(db_url)}: at revision {state.current} (head)")


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
    from . import migrate  # Alembic loads only for the commands that need it

    _check_db_url(db_url)
    path = sqlite_path(db_url)
    if path is not None and not path.exists():
        raise CliError(f"no archive at {path}: run `grantex-archive db upgrade`", 1)
    engine = Store.open(db_url).engine
    try:
        state = migrate.schema_state(engine)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise CliError(f"database unusable: {_first_line(exc)}", EXIT_DATABASE) from None
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
    from . import migrate  # Alembic loads only for the commands that need it

    _check_db_url(db_url)
    path = sqlite_path(db_url)
    if path is not None and not path.exists():
        raise CliError(f"no archive at {path}", 1)
    try:
        held = _archived_counts(db_url)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise CliError(f"database unusable: {_first_line(exc)}", EXIT_DATABASE) from None
    except sa.exc.DBAPIError as exc:
        raise CliError(_not_an_archive(db_url, exc), EXIT_DATABASE) from None
    if revision == "base":
        loss = (
            f"drops every table of {_safe(db_url)}: {_count(held, 'events', 'event')}, "
            f"{_count(held, 'rejected_events', 'rejected frame')} and "
            f"{_count(held, 'ingest_runs', 'run record')}"
        )
    else:
        loss = (
            f"drops what the migrations after {revision} added to {_safe(db_url)} "
            f"(the {_count(held, 'events', 'event')} stay)"
        )
    if not yes:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            raise CliError(f"not downgraded: this {loss}; pass --yes to confirm", EXIT_CONFIG)
        click.echo(f"This {loss}.")
        answer = click.prompt("Type 'downgrade' to go on", default="", show_default=False)
        if answer.strip() != "downgrade":
            raise CliError("not downgraded", 1)
    try:
        migrate.downgrade(db_url, revision)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        raise CliError(f"database unusable: {_first_line(exc)}", EXIT_DATABASE) from None
    click.echo(f"{_safe(db_url)}: downgraded to {revision}")


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
    where = sqlite_path(db_url) or _safe(db_url)
    return f"{where} is not a usable archive: {_first_line(exc)}"


# -- ingest ----------------------------------------------------------------------


def _positive(_ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and value <= 0:
        raise click.BadParameter("must be greater than 0", param=param)
    return value


@main.command()
@db_option
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the API key (default: env GRANTEX_API_KEY). Never pass the key itself.",
)
@click.option(
    "--base-url",
    envvar=ENV_BASE_URL,
    default=DEFAULT_BASE_URL,
    show_default=True,
    help=f"Grantex API base URL (env {ENV_BASE_URL}).",
)
@click.option("--types", "types_", metavar="T1,T2", help="Only these event types (default: all).")
@click.option("--since", metavar="ISO8601", help="Start here instead of the resume point.")
@click.option(
    "--overlap",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds to re-read before the newest stored event when resuming.",
)
@click.option(
    "--until-idle",
    type=float,
    callback=_positive,
    metavar="SECONDS",
    help="Exit 0 once connected and no event arrived for this long (cron mode).",
)
@click.option(
    "--max-runtime",
    type=float,
    callback=_positive,
    metavar="SECONDS",
    help="Stop after this long; exit 69 if the service was never reached.",
)
@click.option("--max-events", type=int, callback=_positive, help="Stop after N events.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=100_000),
    default=1000,
    show_default=True,
    help="Events per transaction.",
)
@click.option(
    "--flush-interval",
    type=float,
    default=1.0,
    show_default=True,
    callback=_positive,
    help="Seconds before a partial batch is committed.",
)
@click.option("--source", default="default", show_default=True, help="Label for this account.")
@click.option(
    "--read-timeout",
    type=float,
    default=90.0,
    show_default=True,
    callback=_positive,
    help="Seconds without data (keepalives included) before reconnecting.",
)
@click.option(
    "--db-retry-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to keep retrying an unusable database before exiting 4.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log line format on stderr.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def ingest(
    db_url: str,
    api_key_file: Path | None,
    base_url: str,
    types_: str | None,
    since: str | None,
    overlap: float,
    until_idle: float | None,
    max_runtime: float | None,
    max_events: int | None,
    batch_size: int,
    flush_interval: float,
    source: str,
    read_timeout: float,
    db_retry_timeout: float,
    log_format: str,
    quiet: bool,
) -> None:
    """Stream Grantex events into the archive.

    Resumes from the newest archived event minus --overlap, de-duplicates on
    the event id, and follows the stream until a stopping option says so.

    \b
    Exit codes: 0 done (also after SIGTERM/SIGINT), 2 usage or configuration
    error, 3 credentials rejected, 4 database unusable, 69 service unreachable
    for the whole run, 75 another ingest holds the lock.

    \b
    Examples:
      # cron: catch up, then exit
      grantex-archive ingest --until-idle 60 --max-runtime 3300
      # a service: follow forever
      grantex-archive ingest --api-key-file /etc/grantex/key --source prod
    """
    since_at = _parse_since(since)
    _check_db_url(db_url, creates=True)
    if not source.strip():
        raise click.BadParameter("must not be empty", param_hint="'--source'")
    if len(source) > MAX_TEXT:
        raise click.BadParameter(
            f"must be at most {MAX_TEXT} characters (it is stored beside every event)",
            param_hint="'--source'",
        )
    try:
        api_key = load_api_key(api_key_file)
        settings = IngestSettings(
            db_url=db_url,
            base_url=check_base_url(base_url),
            api_key=api_key,
            source=source,
            types=parse_types(types_),
            since=since_at,
            overlap=overlap,
            until_idle=until_idle,
            max_runtime=max_runtime,
            max_events=max_events,
            batch_size=batch_size,
            flush_interval=flush_interval,
            read_timeout=read_timeout,
            db_retry_timeout=db_retry_timeout,
        )
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    setup_logging(
        log_format, logging.WARNING if quiet else logging.INFO, secrets=(api_key.reveal(),)
    )
    try:
        try:
            result = run_ingest(settings, EXIT_CODES)
        except LockHeld as exc:
            raise CliError(str(exc), EXIT_LOCKED) from None
        except StoreError as exc:
            raise CliError(str(exc), EXIT_DATABASE) from None
    except CliError as exc:
        if log_format != "json":
            raise
        _fatal_json(exc.message, exc.exit_code, None)
    exit_code = EXIT_CODES[result.outcome]
    if exit_code != 0:
        message = result.error or result.outcome
        if log_format == "json":
            _fatal_json(message, exit_code, result.outcome)
        raise CliError(message, exit_code)


def _fatal_json(message: str, exit_code: int, outcome: str | None) -> None:
    """With JSON logs the fatal error is one JSON line (not also an ``Error:`` line)."""
    fields = {"exit_code": exit_code, "outcome": outcome, "error": message}
    logging.getLogger("grantex_archive").error("%s", message, extra={"fields": fields})
    sys.exit(exit_code)


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0] if str(orig or exc).strip() else repr(exc)


def _safe(url: str) -> str:
    return sa.engine.make_url(url).render_as_string(hide_password=True)


# -- simulate and demo ---------------------------------------------------------------


@main.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on at 127.0.0.1 (0: any free port; the URL printed says which).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed.")
@click.option(
    "--backlog",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Events of history to generate up front (replayed with `since`).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Live events per second.",
)
@click.option("--total-events", type=click.IntRange(min=0), help="Stop live events after N.")
@click.option(
    "--envelope",
    type=click.Choice(["live", "documented", "mixed"]),
    default="live",
    show_default=True,
    help="Envelope and data shapes: the live service's or the documented SDK's.",
)
@click.option(
    "--keepalive",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds between keepalive comments on an idle stream (0: none).",
)
@click.option("--drop-every", type=click.IntRange(min=1), help="Fault: drop mid-frame every N.")
@click.option(
    "--fail-status",
    "fail_statuses",
    type=click.IntRange(400, 599),
    multiple=True,
    help="Fault: answer the first requests with these statuses (repeatable).",
)
@click.option(
    "--fail-always",
    type=click.IntRange(400, 599),
    help="Fault: answer every request with this status.",
)
@click.option("--retry-after", type=click.FloatRange(min=0), help="Retry-After on faults.")
@click.option("--malformed-every", type=click.IntRange(min=1), help="Fault: bad frame every N.")
@click.option("--emit-ids", is_flag=True, help="Send `id:` fields and honour Last-Event-ID.")
@click.option("--emit-retry", type=click.IntRange(min=0), metavar="MS", help="Send `retry: MS`.")
@click.option(
    "--backlog-span",
    type=click.FloatRange(min=0, min_open=True),
    default=86400.0,
    show_default=True,
    help="Seconds of history the backlog spans, ending now.",
)
def simulate(
    port: int,
    seed: int,
    backlog: int,
    rate: float,
    total_events: int | None,
    envelope: str,
    keepalive: float,
    drop_every: int | None,
    fail_statuses: tuple[int, ...],
    fail_always: int | None,
    retry_after: float | None,
    malformed_every: int | None,
    emit_ids: bool,
    emit_retry: int | None,
    backlog_span: float,
) -> None:
    """Serve a Grantex-compatible event stream on 127.0.0.1 for tests and trials.

    The server requires the bearer key from GRANTEX_API_KEY; with none set it
    makes one up and prints it. It prints its base URL on stdout, then serves
    until interrupted.

    \b
    Example:
      GRANTEX_API_KEY=dev grantex-archive simulate --port 8765 --backlog 5000 --rate 0 &
      GRANTEX_API_KEY=dev GRANTEX_BASE_URL=http://127.0.0.1:8765 \\
        grantex-archive ingest --since 2000-01-01T00:00:00Z --until-idle 2
    """
    from .simulator import Simulator, SimulatorConfig

    key = os.environ.get("GRANTEX_API_KEY", "").strip()
    made_up = not key
    if made_up:
        key = "sim_" + secrets.token_hex(12)
    try:
        config = SimulatorConfig(
            api_key=key,
            port=port,
            seed=seed,
            backlog=backlog,
            rate=rate,
            total_events=total_events,
            envelope=envelope,
            keepalive=keepalive,
            drop_every=drop_every,
            fail_statuses=fail_statuses,
            fail_always=fail_always,
            retry_after=retry_after,
            malformed_every=malformed_every,
            emit_ids=emit_ids,
            emit_retry=emit_retry,
            backlog_span=backlog_span,
        )
    except ValueError as exc:
        raise CliError(str(exc), EXIT_CONFIG) from None
    try:
        sim = Simulator(config).start()
    except OSError as exc:
        raise CliError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}", 1) from None
    click.echo(f"Serving Grantex events at {sim.base_url}")
    click.echo(f"History starts at {format_timestamp(sim.history_start)}")
    if made_up:
        # A throwaway key for a local simulator, printed so it can be used.
        click.echo(f"GRANTEX_API_KEY={key}")
    sys.stdout.flush()
    try:
        sim.serve_forever()
    finally:
        sim.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
