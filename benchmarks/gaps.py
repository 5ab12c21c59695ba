"""One compressed day of a live-like service, with restarts: what each deployment keeps and loses.

Three deployments run side by side, each against its own simulator (same seed
and settings: the live service's behaviour, ``--replay none``, held headers,
a subscribe delay, the five-stream cap) and into its own archive:

- **a** cron ``ingest --until-idle`` (the deployment that suits only a
  producer that replays ``since``);
- **b** hand-over cron: ``ingest --max-runtime 2T --wait-lock T/2`` every T
  seconds, plus a run at boot (``@reboot``);
- **c** as b, plus ``receive`` (started at boot, as systemd does) for the
  service's webhooks, and ``reconcile`` from cron and once at the end.

The day has the same events for each: a steady rate of live events, two
restarts of the worker host (every process of the deployment killed with
SIGKILL, nothing started until the host is back) and one crash of the
service (every stream cut, its slots leaked). The simulator's delivery
ledger says which events any stream was sent; the archive says which it
holds and through which channel; the reconcile findings say what the
service's state showed that the archive lacks. Every emitted event is
counted once, in the first of: archived (stream first, webhook first while
the stream had it too, webhook only), known from reconcile only (a finding
names it: its grant created, its grant revoked, its webhook delivery, its
budget, bundle or DPDP record), or lost, with the window it was emitted in:
the host down or booting, the service's doing (the crash until the next
connection subscribed, or a new connection's subscribe delay), or other
(target: none for b and c). Events emitted before a deployment's first
connection was subscribed are not counted: its archive starts there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from ingest import migrate
from ingest.simulator import Simulator, SimulatorConfig
from ingest.simulator.accounting import category, finding_keys
from queries import query

from .machine import facts_line
from .results import write_section

PG_URL = os.environ.get("GRANTEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
SETUPS = ("a", "b", "c")
SETUP_NAMES = {
    "a": "cron --until-idle",
    "b": "hand-over cron",
    "c": "hand-over cron + receive + reconcile",
}
CATEGORIES = (
    "stream first",
    "webhook first",
    "webhook only",
    "reconcile only",
    "lost: host down",
    "lost: service",
    "lost: other",
)
SUBSCRIBE_DELAY = 0.05
"""Seconds after its request a stream is subscribed (the simulator's subscribe delay)."""

FLUSH_SLACK = 2.0
"""Seconds before a kill whose events count as the host's: the batch in memory dies with it."""


METHOD = """## Gaps

Command: `make bench-gaps` (= `python -m benchmarks.gaps`: SQLite, then
PostgreSQL); `make bench-gaps-quick` runs a 60 s day on SQLite without
writing this file.

Method, all in one run on the same machine. The three deployments (a) cron
`ingest --until-idle 5 --max-runtime 0.75T`, (b) hand-over cron `ingest
--max-runtime 2T --wait-lock T/2` every T seconds plus a run at boot, (c) b
plus `receive` (started at boot) and `reconcile` every 3T and once at the
end run side by side, each with its own simulator (same seed and settings:
no replay, held headers, a 50 ms subscribe delay, the five-stream cap) and
its own archive, through the real CLI as child processes. The day is
compressed: a steady rate of live events, two restarts of the worker host
(every process of the deployment killed with SIGKILL; nothing runs until
the host is back), one crash of the service (every stream cut, its slots
leaked), the webhook retry schedule scaled down. Each event the simulator
emitted after the deployment's first connection is counted once, from the
simulator's delivery ledger, the archive's rows and channels, and the
reconcile findings: archived (the stream first; the webhook first while a
stream was sent it too; the webhook only), known from reconcile only (a
finding names it or the fact it carries), or lost, by the window it was
emitted in (the host down or booting, with the batch in memory at the kill;
the service's doing: its crash until the next connection subscribed, or a
new connection's subscribe delay; other). Revoked grants found: the grants
the service's compliance export shows revoked that the archive's
`revocations` view holds (stream, webhook or reconcile). Target: (b) and (c)
lose nothing in "other"; (c) finds every revoked grant."""


@dataclass(frozen=True)
class Day:
    """The compressed day: its length and its restarts, in seconds from its start."""

    seconds: float
    cron_every: float
    reconcile_every: float
    host_down: tuple[tuple[float, float], ...]  # (at, for how long)
    service_crash: float
    rate: float

    @classmethod
    def scaled(cls, seconds: float, cron_every: float, rate: float, down_for: float) -> Day:
        return cls(
            seconds=seconds,
            cron_every=cron_every,
            reconcile_every=3 * cron_every,
            host_down=((0.3 * seconds, down_for), (0.75 * seconds, down_for)),
            service_crash=0.55 * seconds,
            rate=rate,
        )


@dataclass
class Host:
    """One deployment's worker host: its processes, started and killed as the day goes."""

    setup: str
    db_url: str
    sim: Simulator
    env: dict[str, str]
    workdir: Path
    day: Day
    receiver_port: int
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    exits: Counter[str] = field(default_factory=Counter)
    boots: list[float] = field(default_factory=list)  # wall time the host came back
    downs: list[float] = field(default_factory=list)  # wall time the host went down

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "ingest.cli", *args, "--db", self.db_url]

    def spawn(self, name: str, args: list[str]) -> None:
        log = (self.workdir / f"{self.setup}-{name}.log").open("ab")
        proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=log)
        log.close()
        self.procs.append((name, proc))

    def cron_ingest(self) -> None:
        t = self.day.cron_every
        if self.setup == "a":
            extra = ["--until-idle", "5", "--max-runtime", f"{0.75 * t:g}"]
        else:
            extra = ["--max-runtime", f"{2 * t:g}", "--wait-lock", f"{t / 2:g}"]
        self.spawn("ingest", self.command("ingest", *extra))

    def cron_reconcile(self) -> None:
        self.spawn("reconcile", self.command("reconcile"))

    def start_receiver(self) -> None:
        secret_file = self.workdir / f"{self.setup}-webhook-secret"
        listen = f"127.0.0.1:{self.receiver_port}"
        args = ["receive", "--listen", listen, "--secret-file", str(secret_file), "--quiet"]
        self.spawn("receive", self.command(*args))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://{listen}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"the receiver of setup {self.setup} did not come up")

    def reap(self) -> None:
        """Count the exit codes of the processes that ended."""
        alive = []
        for name, proc in self.procs:
            code = proc.poll()
            if code is None:
                alive.append((name, proc))
            else:
                self.exits[f"{name} {code}"] += 1
        self.procs = alive

    def kill_all(self) -> None:
        """The host goes down: every process dies at once, nothing is flushed."""
        self.downs.append(time.time())
        for name, proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            self.exits[f"{name} killed"] += 1
        self.procs = []

    def boot(self) -> None:
        self.boots.append(time.time())
        if self.setup == "c":
            self.start_receiver()
        if self.setup != "a":
            self.cron_ingest()  # @reboot

    def stop_all(self, timeout: float = 30.0) -> None:
        """The day is over: SIGTERM (each process drains and exits 0), then wait."""
        for _, proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.reap()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def live_day(host: Host, t0: float) -> None:
    """Run one host through the day: cron ticks, restarts, reconcile (for c)."""
    day = host.day
    downs = [(t0 + at, t0 + at + span) for at, span in day.host_down]
    next_cron = t0
    next_reconcile = t0 + day.reconcile_every
    up = True
    if host.setup == "c":
        host.start_receiver()
    while time.time() < t0 + day.seconds:
        now = time.time()
        down_now = any(start <= now < end for start, end in downs)
        if up and down_now:
            host.kill_all()
            up = False
        elif not up and not down_now:
            up = True
            host.boot()
        if now >= next_cron:
            if up:
                host.cron_ingest()
            next_cron += day.cron_every
        if now >= next_reconcile:
            if up and host.setup == "c":
                host.cron_reconcile()
            next_reconcile += day.reconcile_every
        host.reap()
        time.sleep(0.02)


def settle(host: Host, timeout: float) -> None:
    """After the day: let webhook retries finish, then stop every process."""
    deadline = time.monotonic() + timeout
    webhook = host.sim.webhook
    while webhook is not None and time.monotonic() < deadline:
        if all(d.status != "pending" for d in webhook.deliveries()):
            break
        time.sleep(0.2)
    time.sleep(3.0)  # the last batches reach the archive
    host.stop_all()
    if host.setup == "c":
        final = subprocess.run(host.command("reconcile"), env=host.env, capture_output=True)
        host.exits[f"reconcile {final.returncode}"] += 1


@dataclass
class Tally:
    setup: str
    emitted: int
    counts: Counter[str]
    revoked_by_service: int
    revoked_in_archive: int
    exits: Counter[str]


def _service_revoked(sim: Simulator, key: str) -> set[str]:
    """Grant ids the service's compliance export shows revoked."""
    revoked: set[str] = set()
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {key}"}) as http:
        for _ in range(100):
            response = http.get("/v1/compliance/export/grants", params={"status": "revoked"})
            if response.status_code == 429:
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            response.raise_for_status()
            grants = response.json()["grants"]
            revoked.update(g["grantId"] for g in grants if g.get("status") == "revoked")
            return revoked
        raise RuntimeError("the compliance export stayed rate limited")


def _archived(db_url: str) -> tuple[dict[str, str], list[tuple[str, str, str | None]]]:
    """The archive's channel per event id, and its reconcile findings."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            channels = {i: c for i, c in conn.execute(sa.text("SELECT id, channel FROM events"))}
            findings = [
                (str(k), str(s), g)
                for k, s, g in conn.execute(
                    sa.text("SELECT kind, subject_id, grant_id FROM reconcile_findings")
                )
            ]
    finally:
        engine.dispose()
    return channels, findings


def _lost_cause(ts: float, host: Host, crash_at: float) -> str:
    """Which window a lost event was emitted in, by the simulator's own subscription times."""
    subscribed = sorted(end for _, end in host.sim.subscriptions)
    for down, boot in zip(host.downs, host.boots, strict=False):
        # Down until a stream opened after the boot was subscribed (none: to the end).
        first = next((t for t in subscribed if t >= boot), float("inf"))
        if down - FLUSH_SLACK <= ts <= first:
            return "lost: host down"
    after_crash = next((t for t in subscribed if t >= crash_at), float("inf"))
    if crash_at <= ts <= after_crash:
        return "lost: service"
    if any(arrived <= ts <= end for arrived, end in host.sim.subscriptions):
        return "lost: service"
    return "lost: other"


def tally(host: Host, key: str, crash_at: float) -> Tally:
    sim = host.sim
    ledger = sim.ledger()
    events = sim.events()[: len(ledger)]
    channels, findings = _archived(host.db_url)
    keys = finding_keys(findings)
    counts: Counter[str] = Counter()
    lost = []
    # The archive starts with its first stream: what came before is not counted.
    start_ms = min((end for _, end in sim.subscriptions), default=0.0) * 1000
    emitted = 0
    for event, (event_id, kind, ts_ms, streamed) in zip(events, ledger, strict=True):
        if ts_ms < start_ms:
            continue
        emitted += 1
        where = category(event, streamed, channels.get(event_id), keys)
        if where == "lost":
            where = _lost_cause(ts_ms / 1000, host, crash_at)
            lost.append((event_id, kind, ts_ms, streamed, where))
        counts[where] += 1
    # What was lost, and when, for a closer look at a kept run (--keep).
    (host.workdir / f"{host.setup}-lost.json").write_text(json.dumps(lost, indent=0))
    table = query(
        "SELECT grant_id FROM revocations",
        host.db_url,
        analytics_dir=host.workdir / f"{host.setup}-copy",
    )
    revoked = set(table.column("grant_id").to_pylist())
    service = _service_revoked(sim, key)
    return Tally(host.setup, emitted, counts, len(service), len(service & revoked), host.exits)


def archive_url(db: str, workdir: Path, setup: str, schemas: list[str]) -> str:
    if db == "sqlite":
        return f"sqlite:///{workdir / f'{setup}.db'}"
    schema = f"gaps_{setup}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    schemas.append(schema)
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def drop_schemas(schemas: list[str]) -> None:
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for schema in schemas:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def run_day(db: str, day: Day, args: argparse.Namespace, workdir: Path) -> list[Tally]:
    key = "bench_" + secrets.token_hex(12)
    secret = secrets.token_hex(24)
    schemas: list[str] = []
    hosts: list[Host] = []
    sims: list[Simulator] = []
    try:
        for setup in args.setups:
            url = archive_url(db, workdir, setup, schemas)
            migrate.upgrade(url)
            port = free_port()
            (workdir / f"{setup}-webhook-secret").write_text(secret + "\n")
            config = SimulatorConfig(
                api_key=key,
                seed=args.seed,
                rate=day.rate,
                total_events=round(day.rate * day.seconds),
                replay="none",
                hold_headers=True,
                subscribe_delay=SUBSCRIBE_DELAY,
                webhook_url=f"http://127.0.0.1:{port}/grantex/webhook" if setup == "c" else None,
                webhook_secret=secret if setup == "c" else None,
                time_scale=args.time_scale,
            )
            sim = Simulator(config)
            sims.append(sim)
            env = {
                **os.environ,
                "GRANTEX_API_KEY": key,
                "GRANTEX_BASE_URL": "",  # set once the simulator listens
            }
            hosts.append(Host(setup, url, sim, env, workdir, day, port))
        for host in hosts:
            host.sim.start()
            host.env["GRANTEX_BASE_URL"] = host.sim.base_url
        t0 = time.time() + 1.0
        crash_at = t0 + day.service_crash
        threads = [threading.Thread(target=live_day, args=(h, t0)) for h in hosts]
        crasher = threading.Timer(crash_at - time.time(), lambda: [s.crash() for s in sims])
        for thread in threads:
            thread.start()
        crasher.start()
        for thread in threads:
            thread.join()
        settlers = [threading.Thread(target=settle, args=(h, 120.0)) for h in hosts]
        for thread in settlers:
            thread.start()
        for thread in settlers:
            thread.join()
        return [tally(h, key, crash_at) for h in hosts]
    finally:
        for host in hosts:
            host.stop_all(timeout=5)
        for sim in sims:
            sim.stop()
        if schemas:
            drop_schemas(schemas)


def render(db: str, tallies: list[Tally]) -> str:
    head = "| setup | emitted | " + " | ".join(CATEGORIES) + " | revoked grants found |"
    rule = "|---|---:|" + "---:|" * len(CATEGORIES) + "---:|"
    lines = [f"**{db}**", "", head, rule]
    for t in tallies:
        cells = " | ".join(f"{t.counts[c]:,}" for c in CATEGORIES)
        revoked = f"{t.revoked_in_archive:,} of {t.revoked_by_service:,}"
        lines.append(f"| {t.setup}: {SETUP_NAMES[t.setup]} | {t.emitted:,} | {cells} | {revoked} |")
    lines.append("")
    for t in tallies:
        exits = ", ".join(f"{name}: {n}" for name, n in sorted(t.exits.items()))
        lines.append(f"- {t.setup}: processes ended as {exits}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=240.0, help="length of the day")
    parser.add_argument("--cron-every", type=float, default=20.0, help="seconds between cron runs")
    parser.add_argument("--rate", type=float, default=20.0, help="live events a second")
    parser.add_argument("--down-for", type=float, default=8.0, help="seconds a host restart lasts")
    parser.add_argument(
        "--time-scale",
        type=float,
        default=0.1,
        help="webhook retry schedule and rate-limit minute multiplied by this",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--setups", type=lambda s: tuple(s.split(",")), default=SETUPS)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--keep", type=Path, help="keep archives and logs in this directory")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    day = Day.scaled(args.seconds, args.cron_every, args.rate, args.down_for)
    dbs = ("sqlite", "postgresql") if args.db == "both" else (args.db,)
    tables = []
    for db in dbs:
        print(f"a {day.seconds:g} s day on {db}: setups {', '.join(args.setups)}...", flush=True)
        if args.keep is not None:
            workdir = args.keep / db
            workdir.mkdir(parents=True, exist_ok=True)
            tallies = run_day(db, day, args, workdir)
        else:
            with tempfile.TemporaryDirectory(prefix="gxa-gaps-") as tmp:
                tallies = run_day(db, day, args, Path(tmp))
        table = render(db, tallies)
        print(table, flush=True)
        tables.append(table)
    command = " ".join(["python -m benchmarks.gaps", *sys.argv[1:]])
    header = (
        f"{facts_line(command, ('sqlite', 'postgresql'), PG_URL)}\n\n"
        f"Day: {day.seconds:g} s, {day.rate:g} events/s, cron every {day.cron_every:g} s, "
        f"reconcile every {day.reconcile_every:g} s (c), host down at "
        + ", ".join(f"{at:g} s for {span:g} s" for at, span in day.host_down)
        + f", service crash at {day.service_crash:g} s, webhook schedule x{args.time_scale:g}, "
        f"subscribe delay {SUBSCRIBE_DELAY * 1000:g} ms"
    )
    body = header + "\n\n" + "\n\n".join(tables)
    if not args.no_write:
        write_section("gaps", body, METHOD)
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    main()
