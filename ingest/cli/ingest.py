"""``grantex-archive ingest``: stream Grantex events into the archive (see :mod:`ingest.runner`)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from ..handover import FIRST_BYTE_WAIT
from ..logs import setup_logging
from ..runner import run_ingest
from ..settings import (
    IngestSettings,
    check_base_url,
    load_api_key,
    parse_types,
)
from .errors import EXIT_CODES, CliError, reported
from .options import (
    check_db_url,
    db_option,
    digest_options,
    digests_written,
    log_options,
    parse_time,
    positive,
    service_options,
    source_option,
)


@click.command()
@db_option
@service_options
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
    callback=positive,
    metavar="SECONDS",
    help="Exit 0 once connected and no event arrived for this long (only for a "
    "producer that replays --since: the live service loses what a run misses).",
)
@click.option(
    "--max-runtime",
    type=float,
    callback=positive,
    metavar="SECONDS",
    help="Stop after this long; exit 69 if the service was never reached.",
)
@click.option("--max-events", type=int, callback=positive, help="Stop after N events.")
@click.option(
    "--wait-lock",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="If another ingest holds the lock, read meanwhile and take over from it "
    "(it exits 0 within 10 s); exit 75 if not taken within SECONDS.",
)
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
    callback=positive,
    help="Seconds before a partial batch is committed.",
)
@source_option
@click.option(
    "--read-timeout",
    type=float,
    default=90.0,
    show_default=True,
    callback=positive,
    help="Seconds without data (keepalives included) before reconnecting.",
)
@click.option(
    "--max-backoff",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest wait between reconnect attempts (a Retry-After may ask for "
    "longer); the live service loses what is emitted while no stream is connected.",
)
@click.option(
    "--db-retry-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to keep retrying an unusable database before exiting 4.",
)
@digest_options
@log_options
def ingest(
    db_url: str,
    api_key_file: Path | None,
    base_url: str,
    types_: str | None,
    since: str | None,
    source: str,
    max_backoff: float,
    digest_dir: Path | None,
    signing_key: Path | None,
    log_format: str,
    quiet: bool,
    **limits: Any,
) -> None:
    """Stream Grantex events into the archive.

    Resumes from the newest archived event minus --overlap, de-duplicates on
    the event id, and follows the stream until a stopping option says so.

    \b
    Exit codes: 0 done (also after SIGTERM/SIGINT, or handing over to a run
    with --wait-lock), 2 usage or configuration error, 3 credentials rejected,
    4 database unusable, 69 service unreachable for the whole run, 75 another
    ingest holds the lock (with --wait-lock: still after SECONDS).

    \b
    Examples:
      # cron without gaps: each run reads until the next one takes over
      grantex-archive ingest --max-runtime 660 --wait-lock 120
      # a service: follow forever (see the README for both setups)
      grantex-archive ingest --api-key-file /etc/grantex/key --source prod
    """
    check_db_url(db_url, creates=True)
    with reported():
        settings = IngestSettings(
            db_url=db_url,
            base_url=check_base_url(base_url),
            api_key=load_api_key(api_key_file),
            source=source,
            types=parse_types(types_),
            since=parse_time(since, "--since"),
            backoff_max=max_backoff,
            # The options named as the settings they set: --overlap, --until-idle,
            # --max-runtime, --max-events, --wait-lock, --batch-size, --flush-interval,
            # --read-timeout and --db-retry-timeout.
            **limits,
        )
    with digests_written(db_url, digest_dir, signing_key):
        _run(settings, log_format, quiet)


def _run(settings: IngestSettings, log_format: str, quiet: bool) -> None:
    """Run the ingest; a failure ends the command with its exit code and one message."""
    level = logging.WARNING if quiet else logging.INFO
    setup_logging(log_format, level, secrets=(settings.api_key.reveal(),))
    json_logs = log_format == "json"
    if settings.wait_lock is not None and settings.wait_lock < 2 * FIRST_BYTE_WAIT:
        logging.getLogger("grantex_archive.ingest").warning(
            "--wait-lock %gs is short: a quiet live stream delivers its first byte only with "
            "its %g s keepalive, and the run holding the lock hands over only then (use %g s "
            "or more)",
            settings.wait_lock,
            FIRST_BYTE_WAIT,
            2 * FIRST_BYTE_WAIT,
        )
    try:
        with reported():
            result = run_ingest(settings, EXIT_CODES)
    except CliError as exc:
        if not json_logs:
            raise
        _fatal_json(exc.message, exc.exit_code, None)
    exit_code = EXIT_CODES[result.outcome]
    if exit_code != 0:
        message = result.error or result.outcome
        if json_logs:
            _fatal_json(message, exit_code, result.outcome)
        raise CliError(message, exit_code)


def _fatal_json(message: str, exit_code: int, outcome: str | None) -> None:
    """With JSON logs the fatal error is one JSON line (not also an ``Error:`` line)."""
    fields = {"exit_code": exit_code, "outcome": outcome, "error": message}
    logging.getLogger("grantex_archive").error("%s", message, extra={"fields": fields})
    sys.exit(exit_code)
