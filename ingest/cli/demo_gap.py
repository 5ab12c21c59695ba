"""The demo's second part: a gap in the live stream, and how the receiver and reconcile close it.

A simulator behaves as the live service (no replay, held headers, a
subscribe delay) and sends its webhooks to a real ``receive`` process. A real
``ingest`` process follows the stream, is killed with SIGKILL and restarted a
few seconds later; the events the service emitted meanwhile are gone from the
stream. The receiver catches the three webhook types; ``reconcile`` reads the
service's state and finds what both missed. The commands are the installed
ones, run as child processes, as cron and systemd would run them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import click
import httpx
import sqlalchemy as sa

from queries.api import prepare_report
from queries.copy import AnalyticsCopy
from queries.reports import get_report

from ..database import create_archive_engine
from .copies import emit, refresh_copy
from .errors import CliError

if TYPE_CHECKING:
    from ..simulator import Simulator

SOURCE = "live"
RATE = 20.0
"""Live events a second."""

PHASES = (5.0, 4.0, 5.0)
"""Seconds the worker runs, lies dead, and runs again."""

TIME_SCALE = 0.05
"""The webhook retry schedule (30, 60, 120, 240 s) compressed to 1.5, 3, 6, 12 s."""

GAP_REPORTS = ("ingest-coverage", "webhook-catches", "reconciliation")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Children:
    """The demo's child processes (the real CLI), their logs in a scratch directory."""

    def __init__(self, db_url: str, env: dict[str, str], logs: Path) -> None:
        self.db_url = db_url
        self.env = env
        self.logs = logs

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "ingest.cli", *args, "--db", self.db_url]
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(command, env=self.env, stdout=log, stderr=log)

    def check(self, name: str, code: int) -> None:
        if code != 0:
            tail = (self.logs / f"{name}.log").read_text(errors="replace").strip()
            last = tail.splitlines()[-1] if tail else "no output"
            raise CliError(f"the demo's {name} exited {code}: {last}", 1)


@contextlib.contextmanager
def _receiver(children: Children, port: int, secret_file: Path) -> Iterator[None]:
    listen = f"127.0.0.1:{port}"
    args = ("--listen", listen, "--secret-file", str(secret_file), "--source", SOURCE)
    proc = children.start("receive", "receive", *args)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{listen}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                children.check("receive", proc.poll() or 1)
            time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    children.check("receive", code)


def _wait_connected(db_url: str, after: datetime, proc: subprocess.Popen[bytes]) -> None:
    """Wait until an ingest run of the live source has a connection requested after ``after``."""
    engine = create_archive_engine(db_url)
    statement = sa.text(
        "SELECT count(*) FROM ingest_connections c JOIN ingest_runs r ON r.id = c.run_id "
        "WHERE r.source = :source AND c.first_byte_at IS NOT NULL AND c.requested_at > :after"
    ).bindparams(sa.bindparam("after", type_=sa.DateTime(timezone=True)))
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with engine.connect() as conn:
                params = {"source": SOURCE, "after": after}
                if conn.execute(statement, params).scalar_one():
                    return
            time.sleep(0.1)
    finally:
        engine.dispose()
    raise CliError("the demo's ingest worker did not connect to the simulator", 1)


def _wait_for_webhooks(sim: Simulator, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    webhook = sim.webhook
    while webhook is not None and time.monotonic() < deadline:
        if all(d.status != "pending" for d in webhook.deliveries()):
            return
        time.sleep(0.1)


def _archived(db_url: str) -> tuple[dict[str, str], list[tuple[str, str, str | None]]]:
    """The live source's channel per event id, and its reconcile findings."""
    engine = create_archive_engine(db_url)
    try:
        with engine.connect() as conn:
            where = {"source": SOURCE}
            archived = sa.text("SELECT id, channel FROM events WHERE source = :source")
            channels = {str(i): str(c) for i, c in conn.execute(archived, where)}
            statement = sa.text(
                "SELECT kind, subject_id, grant_id FROM reconcile_findings WHERE source = :source"
            )
            findings = [(str(k), str(s), g) for k, s, g in conn.execute(statement, where)]
    finally:
        engine.dispose()
    return channels, findings


def run_gap_demo(db_url: str, seed: int, fmt: str) -> None:
    """Open a gap in the stream, close it with the receiver and reconcile, and show how."""
    counts = _open_and_close_gap(db_url, seed)
    copy = AnalyticsCopy(db_url)
    refresh_copy(copy)
    for name in GAP_REPORTS:
        sql, params = prepare_report(name, source=SOURCE)
        summary = get_report(name).summary
        click.echo(f"\n== grantex-archive report {name} --source {SOURCE}: {summary}")
        emit(copy, sql, params, fmt, None)
    parts = (
        f"{counts['stream first']} came by the stream",
        f"{counts['webhook first']} by the receiver first (the stream had them too)",
        f"{counts['webhook only']} by the receiver alone (the stream missed them)",
        f"{counts['reconcile only']} are known from reconcile only",
        f"{counts['lost']} are lost (types the webhooks do not carry, whose fact the "
        "service's state does not show either)",
    )
    click.echo(
        f"\nOf the {sum(counts.values())} events the service emitted from the worker's first "
        f"connection to its last stop: {', '.join(parts[:-1])}, and {parts[-1]}."
    )


def _open_and_close_gap(db_url: str, seed: int) -> Counter[str]:
    """Run the scenario; count where each event emitted while the worker ran ended up."""
    from ..simulator import Simulator, SimulatorConfig
    from ..simulator.accounting import account

    key = "demo_" + secrets.token_hex(12)
    secret = secrets.token_hex(24)
    port = _free_port()
    config = SimulatorConfig(
        api_key=key,
        seed=seed + 1,
        rate=RATE,
        replay="none",
        hold_headers=True,
        subscribe_delay=0.05,
        keepalive=5.0,
        webhook_url=f"http://127.0.0.1:{port}/grantex/webhook",
        webhook_secret=secret,
        time_scale=TIME_SCALE,
    )
    with tempfile.TemporaryDirectory(prefix="grantex-demo-") as scratch, Simulator(config) as sim:
        logs = Path(scratch)
        secret_file = logs / "webhook-secret"
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
        env = {**os.environ, "GRANTEX_API_KEY": key, "GRANTEX_BASE_URL": sim.base_url}
        children = Children(db_url, env, logs)
        click.echo(
            f"\n== A gap, and how it is closed (source '{SOURCE}')\n"
            f"A simulator behaving as the live service (no replay) emits {RATE:g} events/s "
            f"at {sim.base_url} and sends its webhooks to `grantex-archive receive` on "
            f"127.0.0.1:{port}.",
            err=True,
        )
        with _receiver(children, port, secret_file):
            until_ms = _kill_and_restart(children)
            _wait_for_webhooks(sim, 30.0)
        click.echo("`grantex-archive reconcile` reads the service's state...", err=True)
        reconcile = children.start("reconcile", "reconcile", "--source", SOURCE)
        children.check("reconcile", reconcile.wait(120))
        channels, findings = _archived(db_url)
        since_ms = min((end for _, end in sim.subscriptions), default=0.0) * 1000
        # The simulator still emits: the ledger first, then as many events as it lists.
        ledger = sim.ledger()
        events = sim.events()[: len(ledger)]
        kept = [
            (event, row)
            for event, row in zip(events, ledger, strict=True)
            if since_ms <= row[2] <= until_ms
        ]
    return account([e for e, _ in kept], [r for _, r in kept], channels, findings)


def _kill_and_restart(children: Children) -> float:
    """The worker runs, is killed, restarts and stops; returns when it stopped (Unix ms)."""
    run, dead, rerun = PHASES
    ingest = ("ingest", "--source", SOURCE, "--quiet")
    worker = children.start("ingest", *ingest)
    _wait_connected(children.db_url, datetime.now(timezone.utc), worker)
    time.sleep(run)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    click.echo(
        f"The ingest worker followed the stream for {run:g} s and was killed (SIGKILL); it "
        f"restarts {dead:g} s later. The service keeps no history: what it emits meanwhile "
        "never reaches the stream.",
        err=True,
    )
    time.sleep(dead)
    worker = children.start("ingest-again", *ingest)
    _wait_connected(children.db_url, datetime.now(timezone.utc), worker)
    time.sleep(rerun)
    worker.send_signal(signal.SIGTERM)
    children.check("ingest-again", worker.wait(30))
    return time.time() * 1000
