"""The simulator's live-service behaviours over real HTTP on 127.0.0.1: no replay, held
headers, the five-stream counter with its leaks, and the counter's policy on a manual clock."""

from __future__ import annotations

import json
import select
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import httpx
import pytest

from ingest.simulator import Simulator, SimulatorConfig
from ingest.simulator.slots import SlotCounter
from tests.conftest import API_KEY, spawn
from tests.test_simulator import AUTH, KEY, PATH, make, stream

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
        yield http


def event_ids(response: httpx.Response, count: int) -> list[str]:
    """The ids of the next ``count`` events of a stream, keepalives skipped."""
    ids: list[str] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            ids.append(json.loads(line[6:])["id"])
            if len(ids) == count:
                break
    return ids


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def raw_request(sim: Simulator) -> socket.socket:
    host, port = sim.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    request = f"GET {PATH} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n\r\n"
    sock.sendall(request.encode("ascii"))
    return sock


# --------------------------------------------------------------------------- replay none


def test_replay_none_ignores_since_and_last_event_id(client: httpx.Client) -> None:
    with make(backlog=50, replay="none", emit_ids=True, keepalive=0.3) as sim:
        history = sim.events()
        headers = {"Last-Event-ID": history[10]["id"]}
        params = {"since": "2000-01-01T00:00:00Z"}
        with stream(client, sim, headers=headers, params=params) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line)
            assert first == ": keepalive"  # nothing of the 50 events is replayed


def test_replay_since_still_replays_by_default(client: httpx.Client) -> None:
    with make(backlog=20, keepalive=0.3) as sim:
        params = {"since": "2000-01-01T00:00:00Z"}
        with stream(client, sim, params=params) as response:
            assert event_ids(response, 20) == [e["id"] for e in sim.events()]


def test_events_emitted_while_nobody_listens_are_lost(client: httpx.Client) -> None:
    with make(replay="none", rate=200.0, keepalive=5) as sim:
        with stream(client, sim) as response:
            before = event_ids(response, 5)
        emitted = sim.event_count
        deadline = time.monotonic() + 5
        while sim.event_count < emitted + 40:  # the clock keeps generating
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with stream(client, sim, params={"since": "2000-01-01T00:00:00Z"}) as response:
            after = event_ids(response, 5)
        ids = [e["id"] for e in sim.events()]
        assert ids.index(after[0]) >= ids.index(before[-1]) + 40
        missed = set(ids[ids.index(before[-1]) + 1 : ids.index(after[0])])
        assert len(missed) >= 39 and not missed & set(before + after)


def test_a_stream_misses_what_is_emitted_while_it_subscribes(client: httpx.Client) -> None:
    with make(replay="none", rate=200.0, keepalive=5, subscribe_delay=0.5) as sim:
        requested = sim.event_count
        with stream(client, sim) as response:
            first = event_ids(response, 1)[0]
        ids = [e["id"] for e in sim.events()]
        # 0.5 s at 200 events/s: about 100 events went out before the stream subscribed.
        assert ids.index(first) >= requested + 50


def test_the_ledger_marks_exactly_the_events_a_stream_was_sent(client: httpx.Client) -> None:
    with make(replay="none", rate=200.0, keepalive=5, drop_every=30) as sim:
        with stream(client, sim) as response:
            received = event_ids(response, 30)
        emitted = sim.event_count
        deadline = time.monotonic() + 5
        while sim.event_count < emitted + 40:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ledger = sim.ledger()
    streamed = [event_id for event_id, _, _, sent in ledger if sent]
    assert streamed == received  # the frame torn by the drop was not sent in full
    assert [row[0] for row in ledger] == [e["id"] for e in sim.events()]
    assert all(row[2] > 0 and row[1] for row in ledger)


# --------------------------------------------------------------------------- held headers


def test_headers_are_held_until_the_first_keepalive() -> None:
    with make(hold_headers=True, keepalive=0.8) as sim:
        sock = raw_request(sim)
        started = time.monotonic()
        with sock:
            readable, _, _ = select.select([sock], [], [], 0.5)
            assert readable == []  # no status line yet, not even headers
            data = b""
            while b": keepalive" not in data:
                chunk = sock.recv(4096)
                assert chunk
                data += chunk
        assert time.monotonic() - started >= 0.7
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: text/event-stream\r\n" in data


def test_headers_arrive_with_the_first_event() -> None:
    with make(hold_headers=True, keepalive=30, rate=5.0) as sim:
        sock = raw_request(sim)
        with sock:
            data = b""
            while b"data: " not in data:
                chunk = sock.recv(4096)
                assert chunk
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert b"keepalive" not in body


def test_without_hold_headers_the_head_comes_at_once() -> None:
    with make(keepalive=30) as sim:
        sock = raw_request(sim)
        with sock:
            readable, _, _ = select.select([sock], [], [], 2)
            assert readable
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK")


# --------------------------------------------------------------------------- the cap


def test_the_sixth_stream_gets_429_without_retry_after(client: httpx.Client) -> None:
    with make(keepalive=0.5, retry_after=3) as sim, ExitStack() as streams:
        for _ in range(5):
            assert streams.enter_context(stream(client, sim)).status_code == 200
        refused = client.get(sim.base_url + PATH, headers=AUTH)
        assert refused.status_code == 429
        assert refused.json()["code"] == "TOO_MANY_CONNECTIONS"
        assert "Retry-After" not in refused.headers
        assert sim.stats.refused == 1 and sim.slots_taken == 5


def test_leaked_slots_leave_fewer_streams(client: httpx.Client) -> None:
    with make(keepalive=0.5, leaked_slots=3) as sim, ExitStack() as streams:
        for _ in range(2):
            assert streams.enter_context(stream(client, sim)).status_code == 200
        assert client.get(sim.base_url + PATH, headers=AUTH).status_code == 429


def test_a_crash_cuts_streams_and_leaks_their_slots(client: httpx.Client) -> None:
    with make(keepalive=0.2, slot_ttl=1.5) as sim, ExitStack() as streams:
        opened = [streams.enter_context(stream(client, sim)) for _ in range(5)]
        assert sim.crash() == 5
        for response in opened:
            with pytest.raises(httpx.HTTPError):
                for _ in response.iter_raw():
                    pass
        deadline = time.monotonic() + 3
        while sim.stats.active:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        # Nobody is connected, yet the counter still holds five streams.
        refused = client.get(sim.base_url + PATH, headers=AUTH)
        assert refused.status_code == 429 and sim.slots_taken == 5
        # Once nothing touches the counter for slot_ttl, it expires.
        deadline = time.monotonic() + 5
        while sim.slots_taken:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with stream(client, sim) as again:
            assert again.status_code == 200


def test_counter_admits_up_to_the_limit_and_clamps_releases() -> None:
    clock = ManualClock()
    counter = SlotCounter(2, 300.0, clock=clock)
    first, second = counter.acquire(), counter.acquire()
    assert first is not None and second is not None
    assert counter.acquire() is None and counter.count == 2
    counter.release(first)
    counter.release(first)  # a second release changes nothing
    assert counter.count == 1


def test_leaked_slots_stay_while_keepalives_touch_the_counter() -> None:
    clock = ManualClock()
    counter = SlotCounter(5, 300.0, leaked=2, clock=clock)
    live = counter.acquire()
    assert live is not None and counter.count == 3
    for _ in range(20):  # ten minutes of keepalives from the one live stream
        clock.now += 30
        counter.touch()
    assert counter.count == 3
    counter.release(live)
    assert counter.count == 2  # the leaked two remain
    clock.now += 299
    assert counter.count == 2
    clock.now += 1
    assert counter.count == 0


def test_a_leaked_slot_is_never_released_and_expiry_clamps() -> None:
    clock = ManualClock()
    counter = SlotCounter(5, 300.0, clock=clock)
    crashed, live = counter.acquire(), counter.acquire()
    assert crashed is not None and live is not None
    counter.leak(crashed)
    counter.release(crashed)
    assert counter.count == 2
    clock.now += 300  # the key expires although a stream is still open
    assert counter.count == 0
    counter.release(live)
    assert counter.count == 0
    # A refused request still refreshes the expiry, as INCR + EXPIRE do.
    full = SlotCounter(1, 300.0, leaked=1, clock=clock)
    clock.now += 200
    assert full.acquire() is None
    clock.now += 200
    assert full.count == 1


def test_config_rejects_bad_live_settings() -> None:
    with pytest.raises(ValueError, match="replay"):
        SimulatorConfig(api_key=KEY, replay="all")
    with pytest.raises(ValueError, match="leaked_slots"):
        SimulatorConfig(api_key=KEY, leaked_slots=6)
    with pytest.raises(ValueError, match="subscribe_delay"):
        SimulatorConfig(api_key=KEY, subscribe_delay=-1)


def test_simulate_command_serves_the_live_behaviours(client: httpx.Client) -> None:
    args = ["simulate", "--port", "0", "--backlog", "30", "--rate", "0", "--keepalive", "0.3"]
    proc = spawn([*args, "--replay", "none", "--hold-headers", "--leaked-slots", "4"])
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        headers = {"Authorization": f"Bearer {API_KEY}"}
        params = {"since": "2000-01-01T00:00:00Z"}
        with client.stream("GET", url + PATH, headers=headers, params=params) as response:
            assert response.status_code == 200
            assert next(line for line in response.iter_lines() if line) == ": keepalive"
            refused = client.get(url + PATH, headers=headers)
            assert refused.status_code == 429
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
