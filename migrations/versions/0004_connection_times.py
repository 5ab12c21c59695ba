"""Connection records that say when each attempt was requested and first answered.

``ingest_connections.opened_at`` was the time the first byte arrived. The
live service sends its headers only with the first event or keepalive, up to
30 s after the request, while its subscription exists from the request on,
so coverage measured from the first byte starts late. This revision:

- adds ``requested_at`` (when the request was sent; NOT NULL), backfilled
  from ``opened_at`` for the rows written before (their request time was not
  recorded, so their coverage still starts at the first byte);
- renames ``opened_at`` to ``first_byte_at`` and lets it be NULL (an attempt
  that never got a byte: connection refused, timed out);
- adds ``last_seen_at``: the newest moment the run recorded the connection
  alive (a commit of its events, a progress record). A later run that marks a
  killed run ``abandoned`` closes its open connections there.

Downgrading restores ``opened_at`` from ``first_byte_at``, else
``requested_at``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_Time = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("ingest_connections") as batch:
        batch.add_column(sa.Column("requested_at", _Time, nullable=True))
        batch.add_column(sa.Column("last_seen_at", _Time, nullable=True))
        batch.alter_column(
            "opened_at", new_column_name="first_byte_at", existing_type=_Time, nullable=True
        )
    op.execute("UPDATE ingest_connections SET requested_at = first_byte_at")
    with op.batch_alter_table("ingest_connections") as batch:
        batch.alter_column("requested_at", existing_type=_Time, nullable=False)


def downgrade() -> None:
    op.execute(
        "UPDATE ingest_connections SET first_byte_at = requested_at WHERE first_byte_at IS NULL"
    )
    with op.batch_alter_table("ingest_connections") as batch:
        batch.alter_column(
            "first_byte_at", new_column_name="opened_at", existing_type=_Time, nullable=False
        )
        batch.drop_column("last_seen_at")
        batch.drop_column("requested_at")
