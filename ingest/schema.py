"""The archive's schema, declared once.

The Alembic migrations create these tables (``alembic check`` in the tests
keeps the two in step); the analytics copy, its views and the exports take
their column lists from here, so a new column is one edit here plus a
migration.
"""

from __future__ import annotations

import sqlalchemy as sa

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only makes INTEGER PRIMARY KEY the rowid; AUTOINCREMENT keeps ``seq``
# strictly increasing even after deletes, which incremental readers rely on.
_Seq = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Id = sa.String(255)
_Time = sa.DateTime(timezone=True)

CHANNELS: tuple[str, ...] = ("stream", "webhook")
"""How an event can reach the archive: the SSE stream (``ingest``) or a webhook (``receive``)."""

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", _Seq, sa.Identity(), primary_key=True),
    sa.Column("id", _Id, nullable=False),
    sa.Column("source", _Id, nullable=False),
    sa.Column("type", _Id, nullable=False),
    sa.Column("occurred_at", _Time, nullable=False),
    sa.Column("received_at", _Time, nullable=False),
    sa.Column("grant_id", _Id),
    sa.Column("agent_id", _Id),
    sa.Column("principal_id", _Id),
    sa.Column("revoked_by", _Id),
    sa.Column("token_id", _Id),
    sa.Column("method", _Id),
    sa.Column("percentage", sa.Float()),
    sa.Column("remaining", sa.Float()),
    sa.Column("initial", sa.Float()),
    sa.Column("payload", sa.Text(), nullable=False),
    # Migration 0005: the channel that delivered the event first (one of
    # CHANNELS); a later delivery by the other channel is a duplicate. Rows
    # archived before it came by the stream, hence the default.
    sa.Column("channel", sa.String(16), nullable=False, server_default="stream"),
    sa.UniqueConstraint("id"),
    sa.Index(None, "source", "occurred_at"),
    sa.Index(None, "type", "occurred_at"),
    sa.Index(None, "grant_id"),
    sqlite_autoincrement=True,
)

ingest_runs = sa.Table(
    "ingest_runs",
    metadata,
    sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
    sa.Column("source", _Id, nullable=False),
    sa.Column("started_at", _Time, nullable=False),
    sa.Column("finished_at", _Time),
    sa.Column("since_requested", _Time),
    sa.Column("types", sa.Text()),
    sa.Column("base_url", sa.Text()),
    sa.Column("received", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("inserted", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("duplicates", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("rejected", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("reconnects", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("first_occurred_at", _Time),
    sa.Column("last_occurred_at", _Time),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("exit_code", sa.Integer()),
    sa.Column("error", sa.Text()),
    sa.Index(None, "source", "started_at"),
)

ingest_connections = sa.Table(
    "ingest_connections",
    metadata,
    sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
    sa.Column(
        "run_id",
        sa.Integer(),
        sa.ForeignKey("ingest_runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # Migration 0004: when the request was sent (the stream covers time from
    # here: the service subscribes before it sends a byte), when its first
    # byte arrived (NULL when none did), and the newest moment the run
    # recorded the connection alive (a commit of its events or a progress
    # record), where a killed run's connection is closed by the next run.
    sa.Column("requested_at", _Time, nullable=False),
    sa.Column("first_byte_at", _Time),
    sa.Column("last_seen_at", _Time),
    sa.Column("closed_at", _Time),
    sa.Column("since_requested", _Time),
    sa.Column("status_code", sa.Integer()),
    sa.Column("events", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("close_reason", sa.Text()),
    sa.Index(None, "run_id"),
)

rejected_events = sa.Table(
    "rejected_events",
    metadata,
    sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
    sa.Column("source", _Id, nullable=False),
    sa.Column("received_at", _Time, nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("raw", sa.Text(), nullable=False),
    sa.Column("raw_length", sa.Integer(), nullable=False),
    sa.Column("event_id", _Id),
    sa.Column("run_id", sa.Integer(), sa.ForeignKey("ingest_runs.id", ondelete="SET NULL")),
    # Migration 0002: a frame is recorded once per source; later arrivals
    # (the resume overlap re-reads recent frames) only count.
    sa.Column("raw_sha256", sa.String(64)),
    sa.Column("repeats", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_received_at", _Time),
    sa.Index(None, "source", "received_at"),
    sa.Index(None, "event_id"),
    sa.Index(None, "source", "raw_sha256"),
)


EVENT_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in events.columns if c.name not in ("seq", "channel")
)
"""The columns written from each event, in table order.

``seq`` is allocated; ``channel`` is one value for a whole statement, written
by the statement itself rather than bound row by row.
"""

# Migration 0006: reconciliation against the service's REST state. A run
# reads the service's endpoints and records what the archive lacks as
# findings: observations with the endpoint and time they came from, never
# events.
reconcile_runs = sa.Table(
    "reconcile_runs",
    metadata,
    sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
    sa.Column("source", _Id, nullable=False),
    sa.Column("started_at", _Time, nullable=False),
    sa.Column("finished_at", _Time),
    sa.Column("base_url", sa.Text()),
    sa.Column("requests", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("observed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("findings", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("outcome", sa.String(32), nullable=False),
    sa.Column("error", sa.Text()),
    sa.Index(None, "source", "started_at"),
)

reconcile_findings = sa.Table(
    "reconcile_findings",
    metadata,
    sa.Column("id", sa.Integer(), sa.Identity(), primary_key=True),
    sa.Column(
        "run_id",
        sa.Integer(),
        sa.ForeignKey("reconcile_runs.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("source", _Id, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("endpoint", sa.Text(), nullable=False),
    sa.Column("observed_at", _Time, nullable=False),
    # What the service's record is about: a grant, bundle, consent record,
    # allocation or event id; grant_id when the record names a grant.
    sa.Column("subject_id", _Id, nullable=False),
    sa.Column("grant_id", _Id),
    sa.Column("service_status", sa.String(64)),
    sa.Column("service_at", _Time),
    sa.Column("detail", sa.Text()),
    sa.Index(None, "run_id"),
    sa.Index(None, "grant_id"),
)

# Migration 0007: the hash chain (ingest/seal/, docs/integrity.md). Each link
# covers the rows one transaction sealed: which (keys, ranges of seq or id),
# how many, a SHA-256 digest per row (32 bytes each, in key order), the hash
# of the link before and its own. chain_head is one row: the newest link,
# updated in every sealing transaction (its lock orders the writers), and
# how far the rows written before the chain existed go (sealed by `seal`).
chain_links = sa.Table(
    "chain_links",
    metadata,
    sa.Column("n", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("keys", sa.Text(), nullable=False),
    sa.Column("count", sa.Integer(), nullable=False),
    sa.Column("digests", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", _Time, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

chain_head = sa.Table(
    "chain_head",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("n", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("unsealed_events", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("unsealed_rejected", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("unsealed_runs", sa.BigInteger(), nullable=False, server_default="0"),
)


@sa.event.listens_for(chain_head, "after_create")
def _genesis(target: sa.Table, connection: sa.Connection, **_: object) -> None:
    """A chain head created with the tables (``metadata.create_all``) starts at genesis, as
    migration 0007 makes it."""
    connection.execute(target.insert().values(id=1, n=0, hash="0" * 64))
