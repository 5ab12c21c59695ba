"""``grantex-archive seal`` and ``verify-archive``: the archive's hash chain (docs/integrity.md)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .. import migrate
from ..seal.archive import Progress, Verdict, seal_existing, verify_archive
from ..seal.digests import DigestError, load_public_key
from ..seal.window import WindowVerdict, verify_window
from ..store import safe_url
from ..timestamps import format_timestamp
from .errors import EXIT_USAGE, CliError, reported
from .options import (
    check_db_url,
    check_window,
    db_option,
    digest_options,
    digests_written,
    parse_time,
)

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
@digest_options
def seal_command(db_url: str, digest_dir: Path | None, signing_key: Path | None) -> None:
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
        with reported(), digests_written(db_url, digest_dir, signing_key):
            sealed = seal_existing(store.engine, _progress_line("sealing"))
    finally:
        store.close()
    if sys.stderr.isatty():
        click.echo("", err=True)
    counts = ", ".join(f"{sealed[kind]:,} {LABELS[kind]}" for kind in LABELS)
    click.echo(f"{safe_url(db_url)}: sealed {counts} written before the chain")


@click.command("verify-archive")
@db_option
@click.option(
    "--digest-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Also check the digest files here: chained, unaltered, naming the archive's links.",
)
@click.option(
    "--public-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Ed25519 public key (PEM): every digest file must carry its valid signature.",
)
@click.option(
    "--since",
    metavar="ISO",
    help="Check only the links written from this time (inclusive), UTC if no offset.",
)
@click.option("--until", metavar="ISO", help="... and before this time (exclusive).")
def verify_archive_command(
    db_url: str,
    digest_dir: Path | None,
    public_key: Path | None,
    since: str | None,
    until: str | None,
) -> None:
    """Recompute the archive's hash chain and every sealed row.

    Exits 0 when every link and row agrees; 1 otherwise, naming the first
    difference: the row (seq and id) whose content changed, a row missing
    from its link, a row present in no link, a link whose predecessor or
    hash does not match. With --digest-dir, also a digest file missing,
    altered, naming a link hash the archive no longer has (the chain was
    rewritten), or (with --public-key) unsigned or signed by another key.
    Reads the archive once, in bounded memory.

    With --since/--until, checks only the part of the chain written in
    [--since, --until): those links (numbered without a hole, linked to the
    recomputed link before the window and to the one after it), every row
    they hold, rows in their key range that no link holds, and with
    --digest-dir the digest files written in the window (chained from the
    one before). It does not see edits of rows sealed outside the window,
    nor rows inserted with keys outside the window's key range: run it
    without a window for that (docs/integrity.md, "Verifying a window").

    \b
    Exit codes: 0 verified, 1 a difference found, 2 usage error, 4 database
    unusable.

    \b
    Examples:
      grantex-archive verify-archive --db sqlite:////var/lib/grantex/archive.db
      grantex-archive verify-archive --digest-dir /mnt/worm/digests --public-key digest.pub
      grantex-archive verify-archive --since 2026-03-01 --until 2026-03-02
    """
    check_db_url(db_url)
    start = parse_time(since, "--since")
    end = parse_time(until, "--until")
    check_window(start, end)
    key = _public_key(public_key, digest_dir)
    with reported():
        store = migrate.open_archive(db_url, create=False)
    try:
        with reported():
            progress = _progress_line("verifying")
            verdict = (
                verify_archive(store.engine, progress, digest_dir=digest_dir, public_key=key)
                if start is None and end is None
                else verify_window(
                    store.engine, start, end, progress, digest_dir=digest_dir, public_key=key
                )
            )
    finally:
        store.close()
    if sys.stderr.isatty():
        click.echo("", err=True)
    _conclude(db_url, verdict)


def _public_key(path: Path | None, digest_dir: Path | None) -> Any:
    """The Ed25519 key of --public-key (None without it); a bad one is a usage error."""
    if path is not None and digest_dir is None:
        raise CliError("--public-key needs --digest-dir", EXIT_USAGE)
    try:
        return load_public_key(path) if path is not None else None
    except DigestError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def _conclude(db_url: str, verdict: Verdict) -> None:
    """Print what was verified, or list the differences and fail (exit 1) on the first."""
    if verdict.ok:
        click.echo(f"{safe_url(db_url)}: {_verified(verdict)}")
        return
    for problem in verdict.problems:
        click.echo(f"  {problem}", err=True)
    if verdict.more:
        click.echo(f"  ... and {verdict.more:,} more", err=True)
    total = len(verdict.problems) + verdict.more
    plural = "s" if total != 1 else ""
    raise CliError(
        f"the archive does not match its chain ({total:,} difference{plural}); first: "
        f"{verdict.problems[0]}",
        1,
    )


def _verified(verdict: Verdict) -> str:
    """The success line: what was verified, and over which window."""
    rows = ", ".join(f"{verdict.rows[kind]:,} {LABELS[kind]}" for kind in LABELS)
    if not isinstance(verdict, WindowVerdict):
        return f"verified {verdict.links:,} links over {rows}"
    since = format_timestamp(verdict.since) if verdict.since else None
    until = format_timestamp(verdict.until) if verdict.until else None
    window = (
        f"from {since} to {until}" if since and until else f"from {since} on" if since
        else f"before {until}"
    )  # fmt: skip
    if verdict.first is None:
        return f"no links were written {window}: nothing in the window to verify ({rows} checked)"
    return (
        f"verified links {verdict.first:,} to {verdict.last:,} ({verdict.links:,} links, "
        f"written {window}) over {rows}"
    )
