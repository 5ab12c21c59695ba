"""Sealing from the values an insert bound gives the digests of the rows as read back."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from ingest import migrate
from ingest.database import create_archive_engine
from ingest.events import normalise
from ingest.rows import Received
from ingest.seal.archive import verify_archive
from ingest.seal.chain import digests_of, select_rows
from ingest.store import Store

NOW = datetime(2026, 12, 1, 12, 0, 0, 250000, tzinfo=timezone.utc)

FRAMES = [
    # Derived text and floats, a whole number in a float column, a negative zero.
    '{"id":"evt_b1","type":"budget.threshold","createdAt":"2026-12-01T10:00:00.5Z",'
    '"data":{"grantId":"g1","agentId":"a1","percentage":80,"remaining":-0.0,"initial":12.5}}',
    # Most derived fields NULL; non-ASCII text in the payload.
    '{"id":"evt_b2","type":"grant.created","createdAt":"2026-12-01T10:00:01Z",'
    '"data":{"grantId":"g2","note":"caf\u00e9 \u2603"}}',
    '{"id":"evt_b3","type":"token.issued","createdAt":"2026-12-01T10:00:02.123456Z",'
    '"data":{"grantId":"g3","tokenId":"t3","method":"jwt"}}',
]


def links_and_rows(path: Path) -> tuple[bytes, bytes]:
    conn = sqlite3.connect(path)
    try:
        stored = b"".join(d for (d,) in conn.execute("SELECT digests FROM chain_links ORDER BY n"))
        _, read_back = digests_of("events", conn.execute(select_rows("events", "1 = 1")))
    finally:
        conn.close()
    return stored, read_back


def test_links_hold_the_digests_of_the_rows_read_back(tmp_path: Path) -> None:
    path = tmp_path / "archive.db"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    entries = [Received(normalise(frame), NOW) for frame in FRAMES]
    store = Store.open(url)
    try:
        store.write_batch("default", None, entries[:2])
        # One already archived: the link comes from the rows read back instead.
        result = store.write_batch("default", None, entries)
    finally:
        store.close()
    assert result.inserted == 1 and result.duplicates == 2
    stored, read_back = links_and_rows(path)
    assert len(read_back) == 3 * 32
    assert stored == read_back
    engine = create_archive_engine(url)
    try:
        verdict = verify_archive(engine)
    finally:
        engine.dispose()
    assert verdict.ok, verdict.problems
