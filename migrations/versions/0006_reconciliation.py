"""Reconciliation: the runs of ``grantex-archive reconcile`` and their findings.

Adds ``reconcile_runs`` (one row per run: when, against which base URL,
how many requests and service records, how many findings, outcome) and
``reconcile_findings`` (what the service's state shows that the archive
lacks, each with the endpoint and time it was observed at).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Id = sa.String(255)
_Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "reconcile_runs",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("source", _Id, nullable=False),
        sa.Column("started_at", _Time, nullable=False),
        sa.Column("finished_at", _Time, nullable=True),
        sa.Column("base_url", sa.Text(), nullable=True),
        sa.Column("requests", sa.Integer(), server_default="0", nullable=False),
        sa.Column("observed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("findings", sa.Integer(), server_default="0", nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_runs")),
    )
    op.create_index(
        op.f("ix_reconcile_runs_source_started_at"),
        "reconcile_runs",
        ["source", "started_at"],
    )
    op.create_table(
        "reconcile_findings",
        sa.Column("id", sa.Integer(), sa.Identity(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("source", _Id, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("observed_at", _Time, nullable=False),
        sa.Column("subject_id", _Id, nullable=False),
        sa.Column("grant_id", _Id, nullable=True),
        sa.Column("service_status", sa.String(64), nullable=True),
        sa.Column("service_at", _Time, nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["reconcile_runs.id"],
            name=op.f("fk_reconcile_findings_run_id_reconcile_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconcile_findings")),
    )
    op.create_index(op.f("ix_reconcile_findings_run_id"), "reconcile_findings", ["run_id"])
    op.create_index(op.f("ix_reconcile_findings_grant_id"), "reconcile_findings", ["grant_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_reconcile_findings_grant_id"), table_name="reconcile_findings")
    op.drop_index(op.f("ix_reconcile_findings_run_id"), table_name="reconcile_findings")
    op.drop_table("reconcile_findings")
    op.drop_index(op.f("ix_reconcile_runs_source_started_at"), table_name="reconcile_runs")
    op.drop_table("reconcile_runs")
