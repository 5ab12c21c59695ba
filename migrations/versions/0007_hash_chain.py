"""The hash chain: ``chain_links`` and the one-row ``chain_head``.

Rows written from this revision on are sealed in the transaction that writes
them. The rows already in the archive are not: the head records the highest
``events.seq``, ``rejected_events.id`` and ``ingest_runs.id`` written before,
which `grantex-archive seal` seals once (docs/integrity.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "chain_links",
        sa.Column("n", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("keys", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("digests", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("n", name=op.f("pk_chain_links")),
    )
    head = op.create_table(
        "chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("unsealed_events", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("unsealed_rejected", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("unsealed_runs", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_head")),
    )
    bind = op.get_bind()

    def top(table: str, key: str) -> int:
        return int(bind.exec_driver_sql(f"SELECT max({key}) FROM {table}").scalar() or 0)

    op.bulk_insert(
        head,
        [
            {
                "id": 1,
                "n": 0,
                "hash": GENESIS,
                "unsealed_events": top("events", "seq"),
                "unsealed_rejected": top("rejected_events", "id"),
                "unsealed_runs": top("ingest_runs", "id"),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("chain_head")
    op.drop_table("chain_links")
