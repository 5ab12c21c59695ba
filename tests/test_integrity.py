"""The hash chain against tampering: a real archive written by the real CLI from a simulator,
edited with plain SQL, and ``verify-archive`` naming what changed. SQLite and PostgreSQL."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.database import create_archive_engine
from ingest.events import normalise
from ingest.rows import Received
from ingest.schema import events
from ingest.seal.archive import verify_archive
from ingest.seal.chain import Sealer, max_key
from ingest.simulator import Simulator, SimulatorConfig
from ingest.store import Store
from ingest.timestamps import format_timestamp
from tests.conftest import API_KEY, invoke, rows, spawn

pytestmark = pytest.mark.timeout(120)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def ingest_from(url: str, sim: Simulator, *extra: str) -> None:
    since = format_timestamp(sim.history_start)
    result = invoke(
        ["ingest", "--db", url, "--base-url", sim.base_url, "--since", since,
         "--until-idle", "1", "--batch-size", "100", *extra]
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def verify(url: str) -> tuple[int, str]:
    result = invoke(["verify-archive", "--db", url])
    return result.exit_code, result.output


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


@pytest.fixture
def sealed(archive_url: str) -> Iterator[str]:
    """An archive of 600 events, some malformed frames and one run, verified untouched."""
    migrate.upgrade(archive_url)
    config = SimulatorConfig(api_key=API_KEY, seed=3, backlog=600, rate=0, malformed_every=97)
    with Simulator(config) as sim:
        ingest_from(archive_url, sim)
    assert rows(archive_url, "SELECT count(*) FROM events") == [(600,)]
    assert rows(archive_url, "SELECT count(*) FROM rejected_events")[0][0] >= 5
    code, output = verify(archive_url)
    assert code == 0, output
    assert "over 600 events, 6 rejected frames, 1 run records" in output
    yield archive_url


def event_id(url: str, seq: int) -> str:
    return str(rows(url, f"SELECT id FROM events WHERE seq = {seq}")[0][0])


FORGED = (
    "INSERT INTO events (id, source, type, occurred_at, received_at, payload{seq_column}) "
    "VALUES ('evt_forged', 'default', 'grant.revoked', '2026-12-01 10:00:00+00', "
    "'2026-12-01 10:00:01+00', '[]'{seq_value})"
)


@pytest.mark.parametrize(
    ("statements", "message"),
    [
        pytest.param(
            [
                "UPDATE events SET payload = substr(payload, 1, 20) || 'u' || substr(payload, 22) "
                "WHERE seq = 11"
            ],
            "event seq 11 (id {id11}) was changed after link 1 sealed it",
            id="payload-byte",
        ),
        pytest.param(
            ["UPDATE events SET type = 'grant.revoked' WHERE seq = 250"],
            "event seq 250 (id {id250}) was changed after link 3 sealed it",
            id="type",
        ),
        pytest.param(
            ["UPDATE events SET occurred_at = received_at WHERE seq = 12"],
            "event seq 12 (id {id12}) was changed",
            id="occurred-at",
        ),
        pytest.param(
            ["DELETE FROM events WHERE seq = 13"],
            "event 13 is missing: link 1 sealed it, no row has it",
            id="row-deleted",
        ),
        pytest.param(
            [FORGED.format(seq_column="", seq_value="")],
            "event seq 601 (id evt_forged) is in no link",
            id="row-inserted",
        ),
        pytest.param(
            [
                "DELETE FROM events WHERE seq = 14",
                FORGED.format(seq_column=", seq", seq_value=", 14"),
            ],
            "event seq 14 (id evt_forged) was changed after link 1 sealed it",
            id="seq-reused",
        ),
        pytest.param(
            # Two rows' contents exchanged, the ids through a free one (they are unique).
            [
                "UPDATE events SET id = 'evt_tmp' WHERE seq = 15",
                "UPDATE events SET id = '{id15}', payload = (SELECT payload FROM events "
                "WHERE seq = 15) WHERE seq = 16",
                "UPDATE events SET id = '{id16}', payload = '{{}}' WHERE seq = 15",
            ],
            "event seq 15 (id {id16}) was changed after link 1 sealed it",
            id="rows-swapped",
        ),
        pytest.param(
            ["UPDATE events SET revoked_by = 'agent', grant_id = 'grnt_forged' WHERE seq = 17"],
            "event seq 17 (id {id17}) was changed after link 1 sealed it",
            id="derived-columns",
        ),
        pytest.param(
            # The newest link and its rows removed, the head left naming it.
            [
                "DELETE FROM events WHERE seq > 500",
                "DELETE FROM chain_links WHERE n = (SELECT max(n) FROM chain_links)",
            ],
            "the chain head names link",
            id="newest-link-and-rows-deleted",
        ),
        pytest.param(
            ["DELETE FROM rejected_events WHERE id = 2"],
            "rejected frame 2 is missing",
            id="rejected-deleted",
        ),
        pytest.param(
            ["UPDATE ingest_runs SET inserted = inserted - 1"],
            "run record 1 was changed after link",
            id="run-edited",
        ),
        pytest.param(
            ["DELETE FROM chain_links WHERE n = 2"],
            "link 2 is missing",
            id="link-deleted",
        ),
        pytest.param(
            [
                "UPDATE chain_links SET keys = '101-199' , count = 99, "
                "digests = substr(digests, 1, 3168) WHERE n = 2"
            ],
            "link 2 was altered",
            id="link-edited",
        ),
    ],
)
def test_tampering_is_caught_and_named(sealed: str, statements: list[str], message: str) -> None:
    ids = {f"id{seq}": event_id(sealed, seq) for seq in (11, 12, 15, 16, 17, 250)}
    execute(sealed, *(statement.format(**ids) for statement in statements))
    code, output = verify(sealed)
    assert code == 1, output
    assert message.format(**ids) in output
    assert "Error: the archive does not match its chain" in output


def test_an_untouched_archive_stays_verified_as_it_grows(sealed: str) -> None:
    config = SimulatorConfig(api_key=API_KEY, seed=4, backlog=300, rate=0)
    with Simulator(config) as sim:
        ingest_from(sealed, sim)
    code, output = verify(sealed)
    assert code == 0, output
    assert "900 events" in output and "2 run records" in output


def test_a_killed_ingest_leaves_a_chain_that_verifies(archive_url: str) -> None:
    migrate.upgrade(archive_url)
    config = SimulatorConfig(api_key=API_KEY, seed=5, rate=300.0, replay="none")
    with Simulator(config) as sim:
        args = ["ingest", "--db", archive_url, "--base-url", sim.base_url, "--batch-size", "50",
                "--flush-interval", "0.1"]  # fmt: skip
        proc = spawn(args)
        deadline = time.monotonic() + 60
        while rows(archive_url, "SELECT count(*) FROM events")[0][0] < 500:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        code, output = verify(archive_url)
        assert code == 0, output
        # The next run settles the killed one (abandoned: sealed then) and goes on.
        ingest_from(archive_url, sim, "--max-events", "200")
    code, output = verify(archive_url)
    assert code == 0, output
    assert "2 run records" in output
    assert rows(archive_url, "SELECT outcome FROM ingest_runs ORDER BY id")[0] == ("abandoned",)


def batch(start: int, count: int) -> list[Received]:
    entries = []
    for i in range(start, start + count):
        frame = (
            f'{{"id":"evt_{i:06d}","type":"grant.created","createdAt":"2026-12-01T10:00:00.000Z",'
            f'"data":{{"grantId":"g{i}"}}}}'
        )
        entries.append(Received(normalise(frame), NOW))
    return entries


def test_an_archive_from_before_the_chain_is_sealed_once(archive_url: str) -> None:
    migrate.upgrade(archive_url, "0006")
    values = ", ".join(
        f"('evt_old{i}', 'default', 'grant.created', '2026-11-01 10:00:00+00', "
        f"'2026-11-01 10:00:01+00', '{{\"id\":\"evt_old{i}\"}}')"
        for i in range(25)
    )
    execute(
        archive_url,
        f"INSERT INTO events (id, source, type, occurred_at, received_at, payload) VALUES {values}",
        "INSERT INTO ingest_runs (source, started_at, finished_at, outcome) VALUES "
        "('default', '2026-11-01 10:00:00+00', '2026-11-01 10:05:00+00', 'idle')",
    )
    migrate.upgrade(archive_url)
    store = Store.open(archive_url)
    try:
        store.write_batch("default", None, batch(1, 10))
    finally:
        store.close()
    code, output = verify(archive_url)
    assert code == 1
    assert (
        "event seq 1 (id evt_old0) is in no link" in output
        and "run `grantex-archive seal`" in output
    )
    result = invoke(["seal", "--db", archive_url])
    assert result.exit_code == 0, result.output
    assert "sealed 25 events, 0 rejected frames, 1 run records written before the chain" in (
        result.output
    )
    assert verify(archive_url)[0] == 0
    # Sealing again finds nothing left: no row is sealed twice.
    again = invoke(["seal", "--db", archive_url])
    assert "sealed 0 events, 0 rejected frames, 0 run records" in again.output
    assert verify(archive_url)[0] == 0


def test_a_killed_seal_goes_on_from_where_it_stopped(
    archive_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate.upgrade(archive_url, "0006")
    values = ", ".join(
        f"('evt_old{i}', 'default', 'grant.created', '2026-11-01 10:00:00+00', "
        f"'2026-11-01 10:00:01+00', '{{}}')"
        for i in range(50)
    )
    execute(
        archive_url,
        f"INSERT INTO events (id, source, type, occurred_at, received_at, payload) VALUES {values}",
    )
    migrate.upgrade(archive_url)
    from ingest.seal import archive

    monkeypatch.setattr(archive, "SEAL_CHUNK", 20)
    calls = 0
    real = archive._seal_chunk

    def dies_after_two(conn: sa.Connection, kind: str) -> int | None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt  # the process dies between two chunks' transactions
        return real(conn, kind)

    monkeypatch.setattr(archive, "_seal_chunk", dies_after_two)
    engine = sa.create_engine(archive_url)
    with pytest.raises(KeyboardInterrupt):
        archive.seal_existing(engine)
    verdict = verify_archive(engine)
    # The links written so far hold; only the rows not reached yet are unsealed.
    assert [p.kind for p in verdict.problems] == ["unsealed"] * 10
    monkeypatch.setattr(archive, "_seal_chunk", real)
    assert archive.seal_existing(engine)["events"] == 10
    assert verify_archive(engine).ok
    engine.dispose()


def test_a_late_committing_transaction_is_sealed_in_commit_order(archive_url: str) -> None:
    """Two writers at once: the second waits for the chain head, so each link holds exactly
    its own transaction's rows, in the order they committed."""
    migrate.upgrade(archive_url)
    engine = create_archive_engine(archive_url)
    store = Store.open(archive_url)
    holding = threading.Event()
    try:

        def slow_writer() -> None:
            with engine.begin() as conn:
                sealer = Sealer(conn)
                before = max_key(conn, "events")
                conn.execute(
                    events.insert(),
                    [{"id": f"evt_slow{i}", "source": "slow", "type": "grant.created",
                      "occurred_at": NOW, "received_at": NOW, "payload": "{}"}
                     for i in range(5)],
                )  # fmt: skip
                sealer.rows_above("events", before)
                sealer.close()
                holding.set()
                time.sleep(1.0)  # committed late, while the other writer waits

        thread = threading.Thread(target=slow_writer)
        thread.start()
        assert holding.wait(30)
        store.write_batch("default", None, batch(100, 7))
        thread.join()
    finally:
        store.close()
        engine.dispose()
    links = rows(archive_url, "SELECT n, keys, count FROM chain_links ORDER BY n")
    assert links == [(1, "1-5", 5), (2, "6-12", 7)]
    assert verify(archive_url)[0] == 0


def test_status_shows_the_chains_newest_link(sealed: str, tmp_path: Path) -> None:
    result = invoke(
        ["status", "--db", sealed, "--analytics-dir", str(tmp_path / "copy"), "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    ((n, head),) = rows(sealed, "SELECT n, hash FROM chain_head")
    assert f"chain,links,{n}" in result.stdout and f"chain,head,{head}" in result.stdout
    assert "chain,unsealed_before_chain,0" in result.stdout


def test_verify_archive_sees_one_snapshot_while_ingest_writes(archive_url: str) -> None:
    migrate.upgrade(archive_url)
    config = SimulatorConfig(api_key=API_KEY, seed=9, rate=2000.0, replay="none")
    with Simulator(config) as sim:
        args = ["ingest", "--db", archive_url, "--base-url", sim.base_url, "--batch-size", "50",
                "--flush-interval", "0.05"]  # fmt: skip
        proc = spawn(args)
        try:
            deadline = time.monotonic() + 60
            while rows(archive_url, "SELECT count(*) FROM events")[0][0] < 200:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            for _ in range(3):  # links and rows are committed throughout each pass
                code, output = verify(archive_url)
                assert code == 0, output
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
