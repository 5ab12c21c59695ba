"""``grantex-archive receive``: real HTTP to the real receiver process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from ingest import migrate
from ingest.receiver.signature import sign, sign_legacy, verify
from tests.conftest import invoke, rows, spawn
from tests.receiver_process import SECRET, receiver, signed
from tests.scripted_server import Reply, ScriptedServer

NOW = 1_764_662_400  # a unix time for the pure checks


def event(n: int, kind: str = "grant.created") -> bytes:
    """A delivery body exactly as the service sends it (the stream's JSON)."""
    data = {"grantId": f"grnt_{n}", "agentId": "ag_1", "principalId": "user_1"}
    return json.dumps(
        {"id": f"evt_{n:04d}", "type": kind, "createdAt": "2026-12-02T08:00:00.000Z", "data": data},
        separators=(",", ":"),
    ).encode()


def stored(url: str) -> dict[str, str]:
    return dict(rows(url, "SELECT id, channel FROM events"))  # type: ignore[arg-type]


@pytest.fixture
def archive(archive_url: str) -> str:
    """A migrated archive (a PostgreSQL schema is never created implicitly)."""
    migrate.upgrade(archive_url)
    return archive_url


# --------------------------------------------------------------------------- the pure check


@pytest.mark.parametrize(
    ("headers", "allow_legacy", "reason"),
    [
        ({"x-grantex-timestamp": str(NOW), "x-grantex-signature-v2": sign(b"s1", str(NOW), b"{}")}, False, None),
        ({"x-grantex-timestamp": str(NOW - 300), "x-grantex-signature-v2": sign(b"s1", str(NOW - 300), b"{}")}, False, None),
        ({"x-grantex-timestamp": str(NOW - 301), "x-grantex-signature-v2": sign(b"s1", str(NOW - 301), b"{}")}, False, "301s old"),
        ({"x-grantex-timestamp": str(NOW + 400), "x-grantex-signature-v2": sign(b"s1", str(NOW + 400), b"{}")}, False, "far in the future"),
        ({"x-grantex-timestamp": str(NOW), "x-grantex-signature-v2": sign(b"other", str(NOW), b"{}")}, False, "does not match"),
        ({"x-grantex-timestamp": str(NOW + 1), "x-grantex-signature-v2": sign(b"s1", str(NOW), b"{}")}, False, "does not match"),
        ({"x-grantex-signature-v2": sign(b"s1", str(NOW), b"{}")}, False, "without X-Grantex-Timestamp"),
        ({"x-grantex-timestamp": "soon", "x-grantex-signature-v2": sign(b"s1", str(NOW), b"{}")}, False, "not unix seconds"),
        ({"x-grantex-timestamp": str(NOW), "x-grantex-signature-v2": "md5=abc"}, False, "not sha256="),
        ({}, True, "no X-Grantex-Signature-V2"),
        ({"x-grantex-signature": sign_legacy(b"s1", b"{}")}, False, "--allow-legacy-signature"),
        ({"x-grantex-signature": sign_legacy(b"s1", b"{}")}, True, None),
        ({"x-grantex-signature": sign_legacy(b"s1", b"{ }")}, True, "does not match"),
        # With a V2 signature present, the legacy one never decides.
        ({"x-grantex-timestamp": str(NOW - 900), "x-grantex-signature-v2": sign(b"s1", str(NOW - 900), b"{}"),
          "x-grantex-signature": sign_legacy(b"s1", b"{}")}, True, "900s old"),
        # Rotation: any configured secret signs.
        ({"x-grantex-timestamp": str(NOW), "x-grantex-signature-v2": sign(b"s2", str(NOW), b"{}")}, False, None),
    ],
)  # fmt: skip
def test_signature_rules(headers: dict[str, str], allow_legacy: bool, reason: str | None) -> None:
    got = verify(headers, b"{}", (b"s1", b"s2"), NOW, 300.0, allow_legacy)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got
        assert "s1" not in got and "s2" not in got


# --------------------------------------------------------------------------- both channels


def test_stored_once_when_both_channels_deliver_beside_a_running_ingest(
    archive: str, tmp_path: Path
) -> None:
    """The stream and the webhooks deliver overlapping events at the same time: each is
    stored once, the first channel is recorded, and neither process meets a lock."""
    streamed = range(0, 300)
    frames = [b"data: " + event(n, "token.issued") + b"\n\n" for n in streamed]
    with (
        ScriptedServer([Reply(chunks=frames, pause=0.01, hold=20, keepalive=0.2)]) as stream,
        receiver(archive, tmp_path) as running,
    ):
        ingest = spawn(
            ["ingest", "--db", archive, "--base-url", stream.base_url, "--until-idle", "1.5",
             "--max-runtime", "60", "--flush-interval", "0.05", "--batch-size", "20"]
        )  # fmt: skip
        # Deliveries for every third streamed event, and for 40 the stream never had.
        answers = [running.post(event(n, "token.issued")).status_code for n in range(0, 300, 3)]
        answers += [running.post(event(n, "grant.revoked")).status_code for n in range(1000, 1040)]
        _out, err = ingest.communicate(timeout=90)
        assert ingest.returncode == 0, err
        assert "lock" not in err.lower()
        # A late retry of a delivery the stream archived first is a duplicate, answered 200.
        late = running.post(event(299, "token.issued"))
        assert late.status_code == 200 and late.json() == {"status": "duplicate", "id": "evt_0299"}
        assert running.stop() == 0
    assert set(answers) == {200}
    found = stored(archive)
    assert len(found) == 340
    assert rows(archive, "SELECT count(*), count(DISTINCT id) FROM events") == [(340, 340)]
    assert {found[f"evt_{n:04d}"] for n in range(1000, 1040)} == {"webhook"}
    assert sum(1 for v in found.values() if v == "stream") >= 200
    assert "Traceback" not in running.output()


# --------------------------------------------------------------------------- refusals


def test_refusals_store_nothing(archive: str, tmp_path: Path) -> None:
    body = event(1)
    now = int(time.time())
    with receiver(archive, tmp_path) as running:
        cases = {
            "no signature": running.post(body, headers={"Content-Type": "application/json"}),
            "wrong secret": running.post(body, secret="whsec_not_the_one"),
            "signed for another body": running.post(
                body, headers=signed(body.replace(b"grnt_1", b"grnt_9"))
            ),
            "stale": running.post(body, timestamp=now - 400),
            "future": running.post(body, timestamp=now + 400),
            "legacy only": running.post(
                body, headers={"X-Grantex-Signature": sign_legacy(SECRET.encode(), body)}
            ),
        }
        too_big = (
            b'{"id":"evt_big","type":"grant.created","data":{"x":"' + b"a" * (1024 * 1024) + b'"}}'
        )
        big = running.post(too_big)
        wrong_method = httpx.get(running.webhook_url)
        assert running.stop() == 0
    assert {name: r.status_code for name, r in cases.items()} == dict.fromkeys(cases, 401)
    assert all(r.json() == {"error": "signature not valid"} for r in cases.values())
    assert big.status_code == 413
    assert wrong_method.status_code == 405
    assert rows(archive, "SELECT count(*) FROM events") == [(0,)]
    assert rows(archive, "SELECT count(*) FROM rejected_events") == [(0,)]


def test_malformed_json_with_a_valid_signature_is_400_and_kept(
    archive: str, tmp_path: Path
) -> None:
    with receiver(archive, tmp_path) as running:
        first = running.post(b'{"id":"evt_x","type":')
        again = running.post(b'{"id":"evt_x","type":')  # the service's retry
        no_id = running.post(b'{"type":"grant.created","data":{}}')
        assert running.stop() == 0
    assert first.status_code == again.status_code == no_id.status_code == 400
    assert first.json()["error"].startswith("invalid JSON")
    kept = rows(archive, "SELECT reason, raw, repeats, run_id FROM rejected_events ORDER BY id")
    assert [(r[0].split(":")[0], r[1], r[2], r[3]) for r in kept] == [
        ("invalid JSON", '{"id":"evt_x","type":', 1, None),
        ("missing or empty 'id'", '{"type":"grant.created","data":{}}', 0, None),
    ]
    assert rows(archive, "SELECT count(*) FROM events") == [(0,)]


def test_legacy_signature_only_with_the_flag(sqlite_archive: str, tmp_path: Path) -> None:
    body = event(7)
    legacy = {"X-Grantex-Signature": sign_legacy(SECRET.encode(), body)}
    with receiver(sqlite_archive, tmp_path, "--allow-legacy-signature") as running:
        accepted = running.post(body, headers=legacy)
        stale_v2 = running.post(body, timestamp=int(time.time()) - 600)
    assert accepted.status_code == 200 and accepted.json()["status"] == "stored"
    assert stale_v2.status_code == 401  # a V2 signature still decides, and it is stale
    assert stored(sqlite_archive) == {"evt_0007": "webhook"}


def test_rotation_accepts_every_configured_secret(archive: str, tmp_path: Path) -> None:
    old, new = (
        "whsec_old_0123456789abcdef0123456789abcdef0123",
        "whsec_new_fedcba9876543210fedcba9876543210fedc",
    )
    (tmp_path / "more").mkdir()
    third = tmp_path / "more" / "third"
    third.write_text("# added by the operator\n\nwhsec_third_0000000000000000000000000000000000\n")
    with receiver(
        archive, tmp_path, "--secret-file", str(third), secrets=f"{old}\n{new}"
    ) as running:
        answers = [
            running.post(event(1), secret=old).status_code,
            running.post(event(2), secret=new).status_code,
            running.post(
                event(3), secret="whsec_third_0000000000000000000000000000000000"
            ).status_code,
            running.post(event(4), secret=SECRET).status_code,
        ]
    assert answers == [200, 200, 200, 401]
    assert sorted(stored(archive)) == ["evt_0001", "evt_0002", "evt_0003"]


# --------------------------------------------------------------------------- secrets, health, signals


def test_the_secret_never_appears_in_output_or_logs(sqlite_archive: str, tmp_path: Path) -> None:
    with receiver(sqlite_archive, tmp_path, "--log-format", "json") as running:
        running.post(event(1))
        running.post(event(1), secret=SECRET[:-1])
        running.post(event(2), timestamp=0)
        running.post(b"not json at all")
        running.post(event(3), headers={"X-Grantex-Signature-V2": "sha256=" + "0" * 64})
        assert running.stop() == 0
    output = running.output()
    assert "webhook evt_0001 grant.created: stored" in output
    assert output.count("delivery refused (401)") == 3
    for line in running.stderr:
        json.loads(line)
    for form in (SECRET, SECRET[:-1], SECRET[6:], SECRET.encode().hex()):
        assert form not in output
    # A secret file the receiver cannot use is named, its content never shown.
    bad = tmp_path / "bad-secret"
    bad.write_text("whsec with spaces inside\n")
    result = invoke(
        ["receive", "--db", sqlite_archive, "--listen", "127.0.0.1:0", "--secret-file", str(bad)]
    )
    assert result.exit_code == 2
    assert "secret 1 in" in result.output and "with spaces" not in result.output


def test_healthz(archive: str, tmp_path: Path) -> None:
    with receiver(archive, tmp_path) as running:
        health = httpx.get(running.base_url + "/healthz")
        post = httpx.post(running.base_url + "/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert post.status_code == 405


def test_sigterm_answers_the_delivery_in_flight_then_exits_0(archive: str, tmp_path: Path) -> None:
    body = event(5)
    headers = signed(body)
    with receiver(archive, tmp_path) as running:
        host, port = running.base_url.removeprefix("http://").rsplit(":", 1)
        conn = socket.create_connection((host, int(port)), timeout=20)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        conn.sendall(
            f"POST /grantex/webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode()
            + body[:20]
        )
        time.sleep(0.5)
        running.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert running.process.poll() is None, "exited with a request in flight"
        conn.sendall(body[20:])
        answer = conn.recv(4096)
        conn.close()
        code = running.process.wait(30)
    assert answer.startswith(b"HTTP/1.1 200"), answer
    assert code == 0, running.output()
    assert "stopped by SIGTERM" in running.output()
    assert stored(archive) == {"evt_0005": "webhook"}


# --------------------------------------------------------------------------- exit codes


def test_configuration_errors_exit_2(sqlite_archive: str, tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text(SECRET + "\n")
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n")
    base = ["receive", "--db", sqlite_archive]
    listen = ["--listen", "127.0.0.1:0"]
    cases = [
        ([*base, "--secret-file", str(secret), "--listen", "localhost"], "expected HOST:PORT"),
        ([*base, "--secret-file", str(secret), *listen, "--path", "hook"], "absolute URL path"),
        ([*base, *listen, "--secret-file", str(empty)], "holds no secret"),
        ([*base, *listen, "--secret-file", str(tmp_path / "none")], "cannot read secret file"),
        ([*base, *listen], "--secret-file"),
    ]
    for args, message in cases:
        result = invoke(args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output


def test_a_port_in_use_exits_2(sqlite_archive: str, tmp_path: Path) -> None:
    with receiver(sqlite_archive, tmp_path) as running:
        port = running.base_url.rsplit(":", 1)[1]
        second = spawn(
            ["receive", "--db", sqlite_archive, "--listen", f"127.0.0.1:{port}",
             "--secret-file", str(tmp_path / "webhook-secret")]
        )  # fmt: skip
        _out, err = second.communicate(timeout=60)
    assert second.returncode == 2, err
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_an_archive_without_the_schema_exits_4(pg_archive: str, tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text(SECRET + "\n")
    result = invoke(
        ["receive", "--db", pg_archive, "--listen", "127.0.0.1:0", "--secret-file", str(secret)]
    )
    assert result.exit_code == 4
    assert "grantex-archive db upgrade" in result.output


def test_an_archive_that_cannot_take_the_event_answers_503(pg_archive: str, tmp_path: Path) -> None:
    """No 2xx without a commit: the service keeps the delivery and retries it."""
    import sqlalchemy as sa

    migrate.upgrade(pg_archive)
    with receiver(pg_archive, tmp_path) as running:
        engine = sa.create_engine(pg_archive)
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE events RENAME TO events_away"))
        failed = running.post(event(1))
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE events_away RENAME TO events"))
        engine.dispose()
        retried = running.post(event(1))
        assert running.stop() == 0
    assert failed.status_code == 503 and failed.json() == {"error": "archive unavailable"}
    assert retried.status_code == 200 and retried.json()["status"] == "stored"
    assert "delivery not stored (503)" in running.output()
    assert stored(pg_archive) == {"evt_0001": "webhook"}
