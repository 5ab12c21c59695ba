"""``grantex-archive seal`` and ``verify-archive``: the archive's hash chain (docs/integrity.md)."""

from __future__ import annotations

import sys

import click

from .. import migrate
from ..seal.archive import Progress, seal_existing, verify_archive
from ..store import safe_url
from .errors import CliError, reported
from .options import check_db_url, db_option

LABELS = {"events": "events", "rejected": "rejected frames", "runs": "run records"}


def _progress_line(verb: str) -> Progress:
    """A progress callback writing one overwritten line on stderr when it is a terminal."""
    if not sys.stderr.isatty():
        return lambda _kind, _done: None

    def show(kind: str, done: int) -> None:
        click.echo(f"\r{verb} {LABELS[kind]}: {done:,}   ", err=True, nl=False)

    return show


@click.command("seal")
@db_option
def seal_command(db_url: str) -> None:
    """Seal the rows an archive held before it had a hash chain (once).

    Rows written from schema revision 0007 on are sealed as they are
    written. Those written before are attested from the moment this command
    seals them: it links them into the chain, a chunk per transaction, and
    can be run again after an interruption. Safe beside a running ingest.

    \b
    Example:
      grantex-archive db upgrade && grantex-archive seal
    """
    check_db_url(db_url)
    with reported():
        store = migrate.open_archive(db_url, create=False)
    try:
        with reported():
            sealed = seal_existing(store.engine, _progress_line("sealing"))
    finally:
        store.close()
    if sys.stderr.isatty():
        click.echo("", err=True)
    counts = ", ".join(f"{sealed[kind]:,} {LABELS[kind]}" for kind in LABELS)
    click.echo(f"{safe_url(db_url)}: sealed {counts} written before the chain")


@click.command("verify-archive")
@db_option
def verify_archive_command(db_url: str) -> None:
    """Recompute the archive's hash chain and every sealed row.

    Exits 0 when every link and row agrees; 1 otherwise, naming the first
    difference: the row (seq and id) whose content changed, a row missing
    from its link, a row present in no link, a link whose predecessor or
    hash does not match. Reads the archive once, in bounded memory.

    \b
    Exit codes: 0 verified, 1 a difference found, 2 usage error, 4 database
    unusable.

    \b
    Example:
      grantex-archive verify-archive --db sqlite:////var/lib/grantex/archive.db
    """
    check_db_url(db_url)
    with reported():
        store = migrate.open_archive(db_url, create=False)
    try:
        with reported():
            verdict = verify_archive(store.engine, _progress_line("verifying"))
    finally:
        store.close()
    if sys.stderr.isatty():
        click.echo("", err=True)
    rows = ", ".join(f"{verdict.rows[kind]:,} {LABELS[kind]}" for kind in LABELS)
    if verdict.ok:
        click.echo(f"{safe_url(db_url)}: verified {verdict.links:,} links over {rows}")
        return
    for problem in verdict.problems:
        click.echo(f"  {problem}", err=True)
    if verdict.more:
        click.echo(f"  ... and {verdict.more:,} more", err=True)
    total = len(verdict.problems) + verdict.more
    raise CliError(
        f"the archive does not match its chain ({total:,} differences); first: "
        f"{verdict.problems[0]}",
        1,
    )
