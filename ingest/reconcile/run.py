"""One reconcile run: read the service's state, compare with the archive, record the findings.

The run is recorded in ``reconcile_runs`` when it starts and finished with its
outcome; its findings go into ``reconcile_findings`` in the same transaction
that finishes it, so a run that failed half-way leaves no partial findings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa

from ..clock import SYSTEM, Clock
from ..database import NotAnArchive, StoreError, first_line, sqlite_path
from ..migrate import open_archive
from ..schema import reconcile_findings, reconcile_runs
from ..settings import Secret
from .archive import data_principals, missing_event_ids, read_knowledge
from .client import ReconcileError, ServiceClient
from .compare import (
    BUDGET_ENDPOINT,
    BUNDLES_ENDPOINT,
    DPDP_ENDPOINT,
    GRANTS_ENDPOINT,
    KINDS,
    WEBHOOKS_ENDPOINT,
    Finding,
    budget_findings,
    bundle_findings,
    delivery_findings,
    dpdp_findings,
    grant_findings,
)
from .lock import reconcile_lock

_ERROR_LENGTH = 2000
DPDP_LISTING_LIMIT = 100
"""How many consent records the DPDP listing holds at most without a ``dataPrincipalId``."""


@dataclass(frozen=True)
class ReconcileSettings:
    """What one reconcile run needs; built by the CLI."""

    db_url: str
    base_url: str
    api_key: Secret = field(repr=False)
    source: str = "default"
    timeout: float = 30.0


@dataclass(frozen=True)
class ReconcileResult:
    """What a finished run found: its id, requests made, service records read, findings,
    and the rate-limited answers among the requests with the seconds spent waiting."""

    run_id: int
    requests: int
    observed: int
    findings: tuple[Finding, ...]
    rate_limited: int = 0
    waited: float = 0.0

    def counts(self) -> dict[str, int]:
        """Findings per kind, every kind listed."""
        counts = dict.fromkeys(KINDS, 0)
        for finding in self.findings:
            counts[finding.kind] += 1
        return counts


def run_reconcile(
    settings: ReconcileSettings,
    clock: Clock = SYSTEM,
    transport: httpx.BaseTransport | None = None,
) -> ReconcileResult:
    """Reconcile the archive's ``settings.source`` with the service; record and return the run.

    Raises :class:`ReconcileError` (after recording the run as failed) when
    the service's state cannot be read, and a ``StoreError`` when the
    archive cannot be used.
    """
    path = sqlite_path(settings.db_url)
    if path is not None and not path.exists():
        raise NotAnArchive(f"no archive at {path}: run `grantex-archive ingest` first")
    store = open_archive(settings.db_url, create=False)
    client = ServiceClient(
        settings.base_url, settings.api_key, clock, timeout=settings.timeout, transport=transport
    )
    try:
        with reconcile_lock(store.engine, settings.source):
            return _run(settings, store.engine, client, clock)
    finally:
        client.close()
        store.close()


def _run(
    settings: ReconcileSettings, engine: sa.Engine, client: ServiceClient, clock: Clock
) -> ReconcileResult:
    """The run, under the lock: its record, the reading, the findings."""
    source = settings.source
    with _database(), engine.begin() as conn:
        # Under the lock, a run of this source still marked running was killed.
        conn.execute(
            sa.update(reconcile_runs)
            .where(reconcile_runs.c.source == source, reconcile_runs.c.outcome == "running")
            .values(outcome="abandoned")
        )
        run_id: int = conn.execute(
            sa.insert(reconcile_runs)
            .values(
                source=source, started_at=clock.now(), base_url=settings.base_url, outcome="running"
            )
            .returning(reconcile_runs.c.id)
        ).scalar_one()
    try:
        findings, observed = _observe(client, engine, source, clock)
    except ReconcileError as exc:
        with _database(), engine.begin() as conn:
            _finish(conn, run_id, source, clock, client.requests, 0, [], "failed", str(exc))
        raise
    with _database(), engine.begin() as conn:
        _finish(conn, run_id, source, clock, client.requests, observed, findings, "completed", None)
    return ReconcileResult(
        run_id, client.requests, observed, tuple(findings), client.rate_limited, client.waited
    )


def _observe(
    client: ServiceClient, engine: sa.Engine, source: str, clock: Clock
) -> tuple[list[Finding], int]:
    """Read every endpoint and compare; the findings and the number of service records read."""
    grants = _records(client.listing(GRANTS_ENDPOINT, "grants"))
    grants_at = clock.now()
    bundles = _records(client.cursor_pages(BUNDLES_ENDPOINT, "bundles"))
    bundles_at = clock.now()
    records = _consent_records(client, engine, source)
    records_at = clock.now()
    allocations = _records(client.listing(BUDGET_ENDPOINT, "allocations"))
    allocations_at = clock.now()
    deliveries = list(_deliveries(client))
    deliveries_at = clock.now()
    observed = len(grants) + len(bundles) + len(records) + len(allocations) + len(deliveries)
    with _database(), engine.connect() as conn:
        known = read_knowledge(conn, source)
        ids = (d.get("eventId") for _endpoint, d in deliveries)
        missing = missing_event_ids(conn, (i for i in ids if isinstance(i, str)))
    findings = [
        *grant_findings(grants, known, grants_at),
        *bundle_findings(bundles, known, bundles_at),
        *dpdp_findings(records, known, records_at),
        *budget_findings(allocations, known, allocations_at),
        *delivery_findings(deliveries, missing, deliveries_at),
    ]
    return findings, observed


def _records(items: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [item for item in items if isinstance(item, dict)]


def _consent_records(
    client: ServiceClient, engine: sa.Engine, source: str
) -> list[Mapping[str, Any]]:
    """Every DPDP consent record the service lists, and those of each data principal the
    archive knows when the listing is full (it holds only the newest records)."""
    records = _records(client.listing(DPDP_ENDPOINT, "records"))
    if len(records) < DPDP_LISTING_LIMIT:
        return records
    with _database(), engine.connect() as conn:
        principals = data_principals(conn, source)
    by_id = {str(r.get("recordId")): r for r in records}
    for principal in sorted(principals):
        listing = client.listing(DPDP_ENDPOINT, "records", {"dataPrincipalId": principal})
        for record in _records(listing):
            by_id.setdefault(str(record.get("recordId")), record)
    return list(by_id.values())


def _deliveries(client: ServiceClient) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every delivery of every webhook, with the endpoint it was read from."""
    for webhook in client.listing(WEBHOOKS_ENDPOINT, "webhooks"):
        webhook_id = webhook.get("id") if isinstance(webhook, dict) else None
        if not isinstance(webhook_id, str):
            continue
        endpoint = f"{WEBHOOKS_ENDPOINT}/{webhook_id}/deliveries"
        for delivery in client.numbered_pages(endpoint, "deliveries"):
            if isinstance(delivery, dict):
                yield endpoint, delivery


def _finish(
    conn: sa.Connection,
    run_id: int,
    source: str,
    clock: Clock,
    requests: int,
    observed: int,
    findings: list[Finding],
    outcome: str,
    error: str | None,
) -> None:
    conn.execute(
        sa.update(reconcile_runs)
        .where(reconcile_runs.c.id == run_id)
        .values(
            finished_at=clock.now(),
            requests=requests,
            observed=observed,
            findings=len(findings),
            outcome=outcome,
            error=error[:_ERROR_LENGTH] if error else None,
        )
    )
    if findings:
        conn.execute(
            sa.insert(reconcile_findings),
            [{"run_id": run_id, "source": source, **dataclasses.asdict(f)} for f in findings],
        )


@contextmanager
def _database() -> Iterator[None]:
    """Turn a database failure into a ``StoreError`` with its first line."""
    try:
        yield
    except sa.exc.SQLAlchemyError as exc:
        raise StoreError(f"the archive failed: {first_line(exc)}") from None
