"""``verify-archive --since/--until``: a window of the chain, on a real SQLite file and the
real PostgreSQL, edited with plain SQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest import migrate
from ingest.schema import events
from ingest.seal.chain import Sealer, max_key
from ingest.seal.digests import write_digest
from ingest.timestamps import format_timestamp
from tests.conftest import invoke, rows
from tests.test_integrity import execute

pytestmark = pytest.mark.timeout(120)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)

# Three links of events, one transaction each: seq 1-10; 20-24 and 26-29 (25 left free);
# 40-49. The window of the tests is the second link's.
BATCHES = ([*range(1, 11)], [*range(20, 25), *range(26, 30)], [*range(40, 50)])


def write_batch(url: str, seqs: list[int]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        sealer = Sealer(conn)
        before = max_key(conn, "events")
        conn.execute(
            events.insert(),
            [{"seq": seq, "id": f"evt_{seq}", "source": "default", "type": "grant.created",
              "occurred_at": NOW, "received_at": NOW, "payload": f'{{"n":{seq}}}'}
             for seq in seqs],
        )  # fmt: skip
        sealer.rows_above("events", before)
        sealer.close()
    engine.dispose()


def link_times(url: str) -> list[str]:
    found = rows(url, "SELECT created_at FROM chain_links ORDER BY n")
    return [format_timestamp(_utc(at)) for (at,) in found]


def _utc(value: datetime | str) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


@pytest.fixture
def chained(archive_url: str) -> tuple[str, list[str]]:
    """An archive of three links, and when each was written."""
    migrate.upgrade(archive_url)
    for seqs in BATCHES:
        write_batch(archive_url, seqs)
    times = link_times(archive_url)
    assert len(times) == 3 and times == sorted(times)
    return archive_url, times


def verify(url: str, *extra: str) -> tuple[int, str]:
    result = invoke(["verify-archive", "--db", url, *extra])
    return result.exit_code, result.output


def window(times: list[str]) -> list[str]:
    """The second link's window: from its time to the third's."""
    return ["--since", times[1], "--until", times[2]]


def test_untouched_window_verifies_and_names_itself(chained: tuple[str, list[str]]) -> None:
    url, times = chained
    code, output = verify(url, *window(times))
    assert code == 0, output
    assert f"verified links 2 to 2 (1 links, written from {times[1]} to {times[2]})" in output
    assert "over 9 events" in output
    code, output = verify(url, "--since", times[1])
    assert code == 0, output
    assert f"verified links 2 to 3 (2 links, written from {times[1]} on)" in output


def test_tamper_inside_the_window_is_caught(chained: tuple[str, list[str]]) -> None:
    url, times = chained
    execute(url, "UPDATE events SET payload = '{\"n\":0}' WHERE seq = 22")
    code, output = verify(url, *window(times))
    assert code == 1
    assert (
        "Error: the archive does not match its chain (1 difference); first: "
        "event seq 22 (id evt_22) was changed after link 2 sealed it"
    ) in output


def test_tamper_outside_the_window_is_not_reported(chained: tuple[str, list[str]]) -> None:
    url, times = chained
    execute(url, "UPDATE events SET type = 'grant.revoked' WHERE seq = 5")
    code, output = verify(url, *window(times))
    assert code == 0, output
    code, output = verify(url)
    assert code == 1
    assert "event seq 5 (id evt_5) was changed after link 1 sealed it" in output


def test_forged_row_in_the_windows_key_range_is_caught(chained: tuple[str, list[str]]) -> None:
    url, times = chained
    execute(
        url,
        "INSERT INTO events (seq, id, source, type, occurred_at, received_at, payload) "
        "VALUES (25, 'evt_forged', 'default', 'grant.revoked', '2026-12-01 10:00:00+00', "
        "'2026-12-01 10:00:01+00', '{}')",
    )
    code, output = verify(url, *window(times))
    assert code == 1
    assert "first: event seq 25 (id evt_forged) is in no link" in output
    # A window before it does not see it; an open-ended one sees a fresh key at the top.
    code, _ = verify(url, "--until", times[1])
    assert code == 0
    execute(url, "DELETE FROM events WHERE seq = 25")
    execute(
        url,
        "INSERT INTO events (seq, id, source, type, occurred_at, received_at, payload) "
        "VALUES (60, 'evt_top', 'default', 'grant.revoked', '2026-12-01 10:00:00+00', "
        "'2026-12-01 10:00:01+00', '{}')",
    )
    code, output = verify(url, "--since", times[2])
    assert code == 1
    assert "first: event seq 60 (id evt_top) is in no link" in output


def test_links_deleted_in_the_window_are_caught(chained: tuple[str, list[str]]) -> None:
    url, times = chained
    execute(url, "DELETE FROM chain_links WHERE n = 2")
    code, output = verify(url, *window(times))
    assert code == 1
    assert "first: link 2 is missing (the next stored is 3)" in output


def test_link_before_the_window_is_recomputed(chained: tuple[str, list[str]]) -> None:
    url, times = chained
    execute(url, "UPDATE chain_links SET keys = '1-9' WHERE n = 1")
    code, output = verify(url, *window(times))
    assert code == 1
    assert "first: link 1, the last before the window, was altered" in output


def test_empty_window_says_so(chained: tuple[str, list[str]]) -> None:
    url, _times = chained
    code, output = verify(url, "--since", "2020-01-01", "--until", "2020-01-02")
    assert code == 0, output
    assert (
        "no links were written from 2020-01-01T00:00:00.000Z to 2020-01-02T00:00:00.000Z: "
        "nothing in the window to verify"
    ) in output


def test_digest_files_of_the_window(chained: tuple[str, list[str]], tmp_path: Path) -> None:
    url, times = chained
    engine = sa.create_engine(url)
    start = datetime.fromisoformat(times[0].replace("Z", "+00:00"))
    files = [write_digest(engine, tmp_path, now=start + timedelta(minutes=m)) for m in (-60, 0, 60)]
    engine.dispose()
    since = format_timestamp(start - timedelta(minutes=30))
    until = format_timestamp(start + timedelta(minutes=30))
    code, output = verify(url, "--digest-dir", str(tmp_path), "--since", since, "--until", until)
    assert code == 0, output
    files[0].write_bytes(files[0].read_bytes() + b" ")  # the one before the window
    code, output = verify(url, "--digest-dir", str(tmp_path), "--since", since, "--until", until)
    assert code == 1
    assert f"first: digest file {files[0].name} was altered" in output
    # A window after it does not look at it (nor at links, none written then).
    later = [format_timestamp(start + timedelta(minutes=m)) for m in (30, 90)]
    code, output = verify(
        url, "--digest-dir", str(tmp_path), "--since", later[0], "--until", later[1]
    )
    assert code == 0, output
    assert "no links were written" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "Invalid value for '--since': 'yesterday' is not"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "must be later than --since"),
        (["--since", "2026-03-02", "--until", "2026-03-02"], "must be later than --since"),
    ],
)
def test_bad_windows_are_usage_errors(sqlite_archive: str, args: list[str], message: str) -> None:
    migrate.upgrade(sqlite_archive)
    code, output = verify(sqlite_archive, *args)
    assert code == 2
    assert [line for line in output.splitlines() if line.startswith("Error:")] == [
        next(line for line in output.splitlines() if message in line)
    ]
