"""``principal_id`` from every name the service gives the person.

The live service names the person a grant is for ``principalId`` in most
events, ``userId`` in consent-bundle events and ``dataPrincipalId`` in DPDP
events. Ingest now fills ``principal_id`` from the first of the three that
holds an identifier; this revision fills it the same way for the events
archived before, from their ``payload``, so ``export --principal-id`` and the
reports find them too.

Only rows whose ``principal_id`` is NULL and whose payload mentions one of the
two other names are read. A value is taken when it is a non-empty string of
at most 255 characters without NUL, or an integer (as text), as ingest takes
it. Downgrading clears what this revision filled (the rows without a
``principalId``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
_MAX_TEXT = 255
_NAMES = ("userId", "dataPrincipalId")

_events = sa.table(
    "events",
    sa.column("seq", sa.BigInteger()),
    sa.column("principal_id", sa.String()),
    sa.column("payload", sa.Text()),
)


def identifier(value: Any) -> str | None:
    """An identifier as ingest stores it: text or an integer as text, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT or "\x00" in value:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return None
    return value


def principal_of(payload: str) -> str | None:
    """The person an archived event names under ``userId`` or ``dataPrincipalId``."""
    try:
        data = json.loads(payload).get("data")
    except (ValueError, AttributeError):
        return None
    if not isinstance(data, dict) or identifier(data.get("principalId")) is not None:
        return None
    for name in _NAMES:
        found = identifier(data.get(name))
        if found is not None:
            return found
    return None


def _candidates(last: int, filled: bool) -> sa.Select[Any]:
    """The next rows after ``last`` whose payload mentions one of the names, with
    ``principal_id`` set (``filled``) or NULL."""
    principal = _events.c.principal_id
    return (
        sa.select(_events.c.seq, _events.c.payload)
        .where(
            _events.c.seq > last,
            principal.is_not(None) if filled else principal.is_(None),
            sa.or_(*(_events.c.payload.contains(f'"{name}"') for name in _NAMES)),
        )
        .order_by(_events.c.seq)
        .limit(_BATCH)
    )


def upgrade() -> None:
    conn = op.get_bind()
    last = 0
    while True:
        chunk = conn.execute(_candidates(last, filled=False)).all()
        if not chunk:
            return
        filled = [
            {"row_seq": seq, "principal_id": principal}
            for seq, payload in chunk
            if (principal := principal_of(payload)) is not None
        ]
        if filled:
            conn.execute(_events.update().where(_events.c.seq == sa.bindparam("row_seq")), filled)
        last = chunk[-1][0]


def downgrade() -> None:
    conn = op.get_bind()
    last = 0
    while True:
        chunk = conn.execute(_candidates(last, filled=True)).all()
        if not chunk:
            return
        cleared = [{"row_seq": seq} for seq, payload in chunk if principal_of(payload) is not None]
        if cleared:
            conn.execute(
                _events.update()
                .where(_events.c.seq == sa.bindparam("row_seq"))
                .values(principal_id=None),
                cleared,
            )
        last = chunk[-1][0]
