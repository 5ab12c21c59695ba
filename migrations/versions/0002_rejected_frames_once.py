"""Rejected frames recorded once per source and frame, with a repeat count.

The resume overlap re-reads recent frames, so the same malformed frame used
to be stored again on every run. ``raw_sha256`` identifies a frame (the
SHA-256 of its full text as received), ``repeats`` counts the later
arrivals and ``last_received_at`` the newest one.

Existing rows are backfilled with the SHA-256 of their stored ``raw``. For a
frame that was capped at 64 KiB or had bytes replaced, that differs from the
hash of the frame itself, so its next arrival starts a new row; rows already
repeated before this migration stay as they are (nothing is merged away).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("rejected_events") as batch:
        batch.add_column(sa.Column("raw_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("repeats", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=True))
    _backfill()
    op.create_index(
        "ix_rejected_events_source_raw_sha256",
        "rejected_events",
        ["source", "raw_sha256"],
        unique=False,
    )


def _backfill() -> None:
    conn = op.get_bind()
    table = sa.table(
        "rejected_events",
        sa.column("id", sa.Integer()),
        sa.column("raw", sa.Text()),
        sa.column("raw_sha256", sa.String()),
    )
    last = 0
    while True:
        chunk = conn.execute(
            sa.select(table.c.id, table.c.raw)
            .where(table.c.id > last, table.c.raw_sha256.is_(None))
            .order_by(table.c.id)
            .limit(_BATCH)
        ).all()
        if not chunk:
            return
        conn.execute(
            table.update().where(table.c.id == sa.bindparam("row_id")),
            [
                {
                    "row_id": row_id,
                    "raw_sha256": hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest(),
                }
                for row_id, raw in chunk
            ],
        )
        last = chunk[-1][0]


def downgrade() -> None:
    op.drop_index("ix_rejected_events_source_raw_sha256", table_name="rejected_events")
    with op.batch_alter_table("rejected_events") as batch:
        batch.drop_column("last_received_at")
        batch.drop_column("repeats")
        batch.drop_column("raw_sha256")
