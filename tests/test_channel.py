"""``events.channel``: the channel that delivered each event first, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.events import normalise
from ingest.store import Received, Store
from tests.conftest import invoke, rows

AT = datetime(2026, 12, 2, 9, 0, tzinfo=timezone.utc)


def frame(event_id: str, grant: str = "g1", kind: str = "grant.created") -> str:
    return json.dumps(
        {
            "id": event_id,
            "type": kind,
            "createdAt": "2026-12-02T08:59:59.000Z",
            "data": {"grantId": grant, "agentId": "a1", "principalId": "p1"},
        }
    )


def received(*frames: str) -> list[Received]:
    return [Received(normalise(text), AT) for text in frames]


def channels(url: str) -> dict[str, str]:
    return dict(rows(url, "SELECT id, channel FROM events"))  # type: ignore[arg-type]


def test_the_first_channel_to_deliver_an_event_is_recorded(store: Store) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    first = store.write_batch("s", None, received(frame("e1"), frame("e2")))
    assert first.inserted == 2
    # The webhook brings e2 again (a duplicate) and e3, which the stream missed.
    late = store.write_batch("s", None, received(frame("e2"), frame("e3")), channel="webhook")
    assert (late.inserted, late.duplicates) == (1, 1)
    # The stream delivers e3 after the webhook did: it stays a webhook event.
    again = store.write_batch("s", None, received(frame("e3"), frame("e4")))
    assert (again.inserted, again.duplicates) == (1, 1)
    assert channels(url) == {"e1": "stream", "e2": "stream", "e3": "webhook", "e4": "stream"}


def test_a_large_batch_records_its_channel_on_every_row(store: Store) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    batch = received(*(frame(f"w{n}", grant=f"g{n}") for n in range(1234)))
    assert store.write_batch("s", None, batch, channel="webhook").inserted == 1234
    assert rows(url, "SELECT channel, count(*) FROM events GROUP BY channel") == [("webhook", 1234)]


def test_an_unknown_channel_is_refused(store: Store) -> None:
    with pytest.raises(ValueError, match="unknown channel 'email'"):
        store.write_batch("s", None, received(frame("e1")), channel="email")


def test_0005_marks_every_event_archived_before_it_as_streamed(archive_url: str) -> None:
    migrate.upgrade(archive_url, "0004")
    engine = sa.create_engine(archive_url)
    with engine.begin() as conn:
        for n in range(3):
            conn.execute(
                sa.text(
                    "INSERT INTO events (id, source, type, occurred_at, received_at, payload) "
                    "VALUES (:id, 's', 'grant.created', :at, :at, '{}')"
                ),
                {"id": f"old{n}", "at": AT},
            )
    engine.dispose()
    migrate.upgrade(archive_url)
    assert channels(archive_url) == {"old0": "stream", "old1": "stream", "old2": "stream"}
    migrate.downgrade(archive_url, "0004")
    engine = sa.create_engine(archive_url)
    try:
        names = {c["name"] for c in sa.inspect(engine).get_columns("events")}
    finally:
        engine.dispose()
    assert "channel" not in names
    assert rows(archive_url, "SELECT count(*) FROM events") == [(3,)]


def test_webhook_catches_counts_what_each_channel_delivered_first(
    archive_url: str, tmp_path: Path
) -> None:
    migrate.upgrade(archive_url)
    store = Store.open(archive_url)
    try:
        store.write_batch(
            "s",
            None,
            received(
                frame("e1"),
                frame("e2"),
                frame("e3", kind="token.issued"),
                frame("e9", kind="budget.threshold"),
            ),
        )
        store.write_batch(
            "s",
            None,
            received(frame("e2"), frame("e4"), frame("e5", kind="token.issued")),
            channel="webhook",
        )
    finally:
        store.close()
    result = invoke(
        ["report", "webhook-catches", "--db", archive_url,
         "--analytics-dir", str(tmp_path / "copy"), "--format", "json"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    found = [
        {k: v for k, v in row.items() if k != "uncovered"} for row in json.loads(result.stdout)
    ]
    assert found == [
        {
            "period": "2026-12-02",
            "type": "grant.created",
            "by_stream": 2,
            "by_webhook": 1,
            "webhook_pct": 33.3,
        },
        {
            "period": "2026-12-02",
            "type": "token.issued",
            "by_stream": 1,
            "by_webhook": 1,
            "webhook_pct": 50.0,
        },
    ]
