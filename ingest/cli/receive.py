"""``grantex-archive receive``: Grantex webhooks into the archive (see :mod:`ingest.receiver`)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from ..logs import setup_logging
from ..receiver import (
    DEFAULT_PATH,
    ReceiverSettings,
    check_path,
    load_secrets,
    parse_listen,
    run_receiver,
)
from ..receiver.signature import DEFAULT_TOLERANCE
from .errors import reported
from .options import (
    check_db_url,
    db_option,
    digest_options,
    digests_written,
    log_options,
    source_option,
)


@click.command()
@db_option
@click.option(
    "--listen",
    required=True,
    metavar="HOST:PORT",
    help="Address to serve on, e.g. 127.0.0.1:8080 behind a TLS proxy (port 0: any free one).",
)
@click.option(
    "--secret-file",
    "secret_files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the webhook's signing secret; one per line, or repeat the option, "
    "to accept several during a rotation. Never pass a secret itself.",
)
@source_option
@click.option(
    "--path", "url_path", default=DEFAULT_PATH, show_default=True, help="URL path of the webhook."
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=1),
    default=DEFAULT_TOLERANCE,
    show_default=True,
    metavar="SECONDS",
    help="Refuse a delivery whose X-Grantex-Timestamp is further than this from now.",
)
@click.option(
    "--allow-legacy-signature",
    is_flag=True,
    help="Also accept a delivery signed only with the legacy body-only X-Grantex-Signature "
    "(no replay bound).",
)
@digest_options
@log_options
def receive(
    db_url: str,
    listen: str,
    secret_files: tuple[Path, ...],
    source: str,
    url_path: str,
    tolerance: float,
    allow_legacy_signature: bool,
    digest_dir: Path | None,
    signing_key: Path | None,
    log_format: str,
    quiet: bool,
) -> None:
    """Receive Grantex webhook deliveries into the archive, beside `ingest`.

    Grantex retries webhooks for grant.created, grant.revoked and token.issued,
    so a receiver catches those events when the stream missed them. Each
    delivery's X-Grantex-Signature-V2 is checked against the secrets before
    anything is stored; the answer is 2xx only after the event is committed
    (an event the stream archived already is a duplicate, stored once).
    GET /healthz answers 200 while the archive is usable.

    \b
    Answers: 200 stored or duplicate, 400 not an event (kept in
    rejected_events), 401 signature missing, wrong or stale, 413 body over
    1 MiB, 503 archive unavailable (the service retries).

    \b
    Exit codes: 0 stopped by SIGTERM/SIGINT after answering the requests in
    flight, 2 usage or configuration error (also: cannot listen), 4 database
    unusable.

    \b
    Examples:
      # behind a TLS proxy that forwards https://archive.example.com/grantex/webhook
      grantex-archive receive --listen 127.0.0.1:8080 --secret-file /etc/grantex/webhook-secret
      # during a rotation: the old and the new secret, one per line
      grantex-archive receive --listen 127.0.0.1:8080 --secret-file /etc/grantex/webhook-secrets
    """
    check_db_url(db_url, creates=True)
    with reported():
        host, port = parse_listen(listen)
        settings = ReceiverSettings(
            db_url=db_url,
            host=host,
            port=port,
            secrets=load_secrets(secret_files),
            source=source,
            path=check_path(url_path),
            tolerance=tolerance,
            allow_legacy=allow_legacy_signature,
        )
    secrets = tuple(secret.reveal() for secret in settings.secrets)
    setup_logging(log_format, logging.WARNING if quiet else logging.INFO, secrets=secrets)
    with reported(), digests_written(db_url, digest_dir, signing_key):
        run_receiver(settings)
