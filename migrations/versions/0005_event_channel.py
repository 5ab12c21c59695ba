"""``events.channel``: which channel delivered each event first.

Events reach the archive by the SSE stream (``ingest``) or by a webhook
delivery (``receive``); the first to deliver an event inserts it and the
other's copy is a duplicate. This revision adds ``channel`` (``stream`` or
``webhook``, NOT NULL). Every event archived before it came by the stream:
the column's default fills them, which both databases do without rewriting
the table (SQLite's ADD COLUMN, PostgreSQL 11+'s constant default).

Downgrading drops the column.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(
            sa.Column("channel", sa.String(16), nullable=False, server_default="stream")
        )


def downgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.drop_column("channel")
