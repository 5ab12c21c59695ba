"""Initial schema: events, rejected_events, ingest_runs, ingest_connections.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Id = sa.String(length=255)
_Time = sa.DateTime(timezone=True)


# Kept whole: a revision is a frozen record of the schema it creates, read top to bottom.
def upgrade() -> None:
    op.create_table(
        "events",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("id", _Id, nullable=False),
        sa.Column("source", _Id, nullable=False),
        sa.Column("type", _Id, nullable=False),
        sa.Column("occurred_at", _Time, nullable=False),
        sa.Column("received_at", _Time, nullable=False),
        sa.Column("grant_id", _Id, nullable=True),
        sa.Column("agent_id", _Id, nullable=True),
        sa.Column("principal_id", _Id, nullable=True),
        sa.Column("revoked_by", _Id, nullable=True),
        sa.Column("token_id", _Id, nullable=True),
        sa.Column("method", _Id, nullable=True),
        sa.Column("percentage", sa.Float(), nullable=True),
        sa.Column("remaining", sa.Float(), nullable=True),
        sa.Column("initial", sa.Float(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_events")),
        sa.UniqueConstraint("id", name=op.f("uq_events_id")),
        sqlite_autoincrement=True,
    )
    op.create_index(op.f("ix_events_grant_id"), "events", ["grant_id"])
    op.create_index(op.f("ix_events_source_occurred_at"), "events", ["source", "occurred_at"])
    op.create_index(op.f("ix_events_type_occurred_at"), "events", ["type", "occurred_at"])

    op.create_table(
        "ingest_runs",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("source", _Id, nullable=False),
        sa.Column("started_at", _Time, nullable=False),
        sa.Column("finished_at", _Time, nullable=True),
        sa.Column("since_requested", _Time, nullable=True),
        sa.Column("types", sa.Text(), nullable=True),
        sa.Column("base_url", sa.Text(), nullable=True),
        sa.Column("received", sa.Integer(), server_default="0", nullable=False),
        sa.Column("inserted", sa.Integer(), server_default="0", nullable=False),
        sa.Column("duplicates", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rejected", sa.Integer(), server_default="0", nullable=False),
        sa.Column("reconnects", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_occurred_at", _Time, nullable=True),
        sa.Column("last_occurred_at", _Time, nullable=True),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_runs")),
    )
    op.create_index(
        op.f("ix_ingest_runs_source_started_at"), "ingest_runs", ["source", "started_at"]
    )

    op.create_table(
        "ingest_connections",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("opened_at", _Time, nullable=False),
        sa.Column("closed_at", _Time, nullable=True),
        sa.Column("since_requested", _Time, nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("events", sa.Integer(), server_default="0", nullable=False),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ingest_runs.id"],
            name=op.f("fk_ingest_connections_run_id_ingest_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_connections")),
    )
    op.create_index(op.f("ix_ingest_connections_run_id"), "ingest_connections", ["run_id"])

    op.create_table(
        "rejected_events",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("source", _Id, nullable=False),
        sa.Column("received_at", _Time, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("raw_length", sa.Integer(), nullable=False),
        sa.Column("event_id", _Id, nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["ingest_runs.id"],
            name=op.f("fk_rejected_events_run_id_ingest_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rejected_events")),
    )
    op.create_index(op.f("ix_rejected_events_event_id"), "rejected_events", ["event_id"])
    op.create_index(
        op.f("ix_rejected_events_source_received_at"),
        "rejected_events",
        ["source", "received_at"],
    )


def downgrade() -> None:
    op.drop_table("rejected_events")
    op.drop_table("ingest_connections")
    op.drop_table("ingest_runs")
    op.drop_table("events")
