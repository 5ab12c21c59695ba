"""``grantex-archive simulate``: a Grantex-compatible event stream on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any

import click

from ..timestamps import format_timestamp
from .errors import EXIT_USAGE, CliError


@click.command()
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
@click.option(
    "--replay",
    type=click.Choice(["since", "none"]),
    default="since",
    show_default=True,
    help="Replay history for `since`/Last-Event-ID, or none (the live service: what is "
    "emitted while no client listens is lost).",
)
@click.option(
    "--hold-headers",
    is_flag=True,
    help="Send status and headers only with the first event or keepalive (as the live service).",
)
@click.option(
    "--subscribe-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="With --replay none: a stream is subscribed this long after its request, and "
    "misses what is emitted meanwhile (as the live service).",
)
@click.option(
    "--leaked-slots",
    type=click.IntRange(0, 5),
    default=0,
    show_default=True,
    help="Of the 5 stream slots, this many are taken from the start, as after a crash.",
)
@click.option(
    "--webhook-url",
    metavar="URL",
    help="POST grant.created, grant.revoked and token.issued here, signed as the live "
    "service signs webhooks (secret from GRANTEX_WEBHOOK_SECRET, else made up and printed).",
)
@click.option(
    "--time-scale",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Multiply the webhook retry schedule (30/60/120/240 s) and the rate-limit minute by this.",
)
@click.option(
    "--rest-rate-limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Read-endpoint requests allowed a minute (the service's plans allow 100, 500, 2000).",
)
def simulate(**options: Any) -> None:
    """Serve a Grantex-compatible event stream on 127.0.0.1 for tests and trials.

    The server requires the bearer key from GRANTEX_API_KEY; with none set it
    makes one up and prints it. It prints its base URL on stdout, then serves
    until interrupted. Besides the stream it serves the service's read endpoints
    (/v1/grants, /v1/compliance/export/grants, /v1/consent-bundles,
    /v1/dpdp/consent-records, /v1/budget/allocations, /v1/webhooks and their
    deliveries) over the same state.

    \b
    Example:
      GRANTEX_API_KEY=dev grantex-archive simulate --port 8765 --backlog 5000 --rate 0 &
      GRANTEX_API_KEY=dev GRANTEX_BASE_URL=http://127.0.0.1:8765 \\
        grantex-archive ingest --since 2000-01-01T00:00:00Z --until-idle 2
    """
    # The simulator (an HTTP server) loads only for the commands that serve events.
    from ..simulator import Simulator, SimulatorConfig

    key = os.environ.get("GRANTEX_API_KEY", "").strip()
    made_up = not key
    if made_up:
        key = "sim_" + secrets.token_hex(12)
    secret = os.environ.get("GRANTEX_WEBHOOK_SECRET", "").strip()
    made_up_secret = options["webhook_url"] is not None and not secret
    if made_up_secret:
        secret = secrets.token_hex(24)  # as the service makes them: 48 hex characters
    try:
        # The options are named as the configuration fields they set.
        config = SimulatorConfig(api_key=key, webhook_secret=secret or None, **options)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    try:
        sim = Simulator(config).start()
    except OSError as exc:
        raise CliError(f"cannot listen on 127.0.0.1:{options['port']}: {exc.strerror}", 1) from None
    click.echo(f"Serving Grantex events at {sim.base_url}")
    click.echo(f"History starts at {format_timestamp(sim.history_start)}")
    if made_up:
        # A throwaway key for a local simulator, printed so it can be used.
        click.echo(f"GRANTEX_API_KEY={key}")
    if made_up_secret:
        # Shown once, as the service shows a new webhook's secret.
        click.echo(f"GRANTEX_WEBHOOK_SECRET={secret}")
    if sim.webhook is not None:
        click.echo(f"Webhook {sim.webhook.webhook_id} delivers to {options['webhook_url']}")
    sys.stdout.flush()
    try:
        sim.serve_forever()
    finally:
        sim.stop()
