"""The event simulator over real HTTP on 127.0.0.1 (httpx, no mocks)."""

from __future__ import annotations

import hashlib
import json
import random
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from ingest.simulator import (
    ENVELOPES,
    EVENT_TYPES,
    MALFORMED_KINDS,
    STREAM_PATH,
    Simulator,
    SimulatorConfig,
    SimulatorStats,
    generate_events,
)
from ingest.simulator.faults import (
    FaultSchedule,
    MalformedFrames,
    fault_code,
    malformed_frame,
    torn_chunk,
)
from ingest.simulator.generator import Batch, EventFactory
from ingest.simulator.handler import (
    bearer_matches,
    parse_stream_query,
    retry_after_text,
)
from ingest.simulator.history import History
from ingest.simulator.ids import UlidSource, parse_since_ms, ulid_ms
from ingest.simulator.server import due_live_events

pytestmark = pytest.mark.timeout(60)

KEY = "sim_test_key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PATH = "/v1/events/stream"
TIMEOUT = httpx.Timeout(5.0)
EVENT_ID = re.compile(r"^evt_[0-7][0-9A-HJKMNP-TV-Z]{25}$")
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
START = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def make(**overrides: Any) -> Simulator:
    settings: dict[str, Any] = {"api_key": KEY, "rate": 0.0}
    settings.update(overrides)
    return Simulator(SimulatorConfig(**settings))


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


class Frames:
    """Raw SSE frames (the bytes between blank lines) of a streaming response."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_raw()
        self.buffer = b""

    def next(self) -> bytes:
        while b"\n\n" not in self.buffer:
            chunk = next(self._chunks, None)
            assert chunk is not None, f"stream ended; leftover {self.buffer[:200]!r}"
            self.buffer += chunk
        frame, self.buffer = self.buffer.split(b"\n\n", 1)
        return frame

    def take(self, count: int) -> list[bytes]:
        return [self.next() for _ in range(count)]

    def until_keepalive(self, limit: int = 100_000) -> list[bytes]:
        """Every frame before the next keepalive comment (i.e. until the stream idles)."""
        frames: list[bytes] = []
        for _ in range(limit):
            frame = self.next()
            if frame == b": keepalive":
                return frames
            frames.append(frame)
        raise AssertionError("no keepalive")


def data_of(frame: bytes) -> dict[str, Any]:
    lines = frame.split(b"\n")
    data = [line[6:] for line in lines if line.startswith(b"data: ")]
    assert len(data) == 1, frame
    parsed: dict[str, Any] = json.loads(data[0])
    return parsed


def stamp_of(event: dict[str, Any]) -> str:
    value = event.get("createdAt", event.get("timestamp"))
    assert isinstance(value, str)
    return value


def parse_stamp(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def stream(client: httpx.Client, sim: Simulator, **kwargs: Any) -> Any:
    headers = dict(AUTH)
    headers.update(kwargs.pop("headers", {}))
    return client.stream("GET", sim.base_url + PATH, headers=headers, **kwargs)


# --------------------------------------------------------------------------- routing & auth


def test_bad_or_missing_key_is_401(client: httpx.Client) -> None:
    with make() as sim:
        url = sim.base_url + PATH
        for headers in (
            {"Authorization": "Bearer wrong"},
            {},
            {"Authorization": KEY},
            {"Authorization": f"Basic {KEY}"},
        ):
            response = client.get(url, headers=headers)
            assert response.status_code == 401
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert body["code"] == "UNAUTHORIZED"
            assert body["message"]
        assert sim.stats.requests == 4
        assert sim.stats.connections == 0


def test_other_routes_are_404(client: httpx.Client) -> None:
    with make() as sim:
        for method, path in (
            ("GET", "/"),
            ("GET", "/v1/events"),
            ("GET", PATH + "/more"),
            ("POST", PATH),
            ("DELETE", PATH),
        ):
            response = client.request(method, sim.base_url + path, headers=AUTH)
            assert response.status_code == 404, (method, path)
            assert response.json()["code"] == "NOT_FOUND"
        assert sim.stats.connections == 0


# --------------------------------------------------------------------------- replay & live


def test_since_replay_is_inclusive_and_ordered(client: httpx.Client) -> None:
    with make(backlog=60, backlog_span=60.0, keepalive=0.3) as sim:
        history = sim.events()
        assert len(history) == 60
        assert stamp_of(history[0]) == sim.history_start.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        pivot = stamp_of(history[25])
        expected = [e["id"] for e in history if stamp_of(e) >= pivot]
        assert history[25]["id"] in expected

        with stream(client, sim, params={"since": pivot}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            assert "content-length" not in response.headers
            frames = Frames(response).until_keepalive()
        assert [data_of(f)["id"] for f in frames] == expected
        for frame in frames:
            assert frame.startswith(b"data: {") and b"\n" not in frame

        # The same instant with an offset, and half a millisecond later (which excludes it).
        at = parse_stamp(pivot)
        shifted = at.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
        later = (at + timedelta(microseconds=500)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"
        for since, want in (
            (shifted, expected),
            (later, [e["id"] for e in history if stamp_of(e) > pivot]),
        ):
            with stream(client, sim, params={"since": since}) as response:
                ids = [data_of(f)["id"] for f in Frames(response).until_keepalive()]
            assert ids == want, since


def test_malformed_since_is_400(client: httpx.Client) -> None:
    with make(backlog=5) as sim:
        for since in ("yesterday", "2026-13-01T00:00:00Z", "2026-03-01T25:00:00Z", "1"):
            response = client.get(sim.base_url + PATH, params={"since": since}, headers=AUTH)
            assert response.status_code == 400, since
            assert response.json()["code"] == "BAD_REQUEST"
        assert sim.stats.connections == 0


def test_types_filter_applies_to_history(client: httpx.Client) -> None:
    with make(backlog=400, backlog_span=400.0, keepalive=0.3) as sim:
        wanted = {"grant.created", "budget.exhausted"}
        expected = [e["id"] for e in sim.events() if e["type"] in wanted]
        assert expected
        params = {"since": sim.history_start.isoformat(), "types": "grant.created,budget.exhausted"}
        with stream(client, sim, params=params) as response:
            events = [data_of(f) for f in Frames(response).until_keepalive()]
        assert [e["id"] for e in events] == expected
        assert {e["type"] for e in events} == wanted


def test_live_events_arrive_without_since(client: httpx.Client) -> None:
    with make(backlog=30, rate=50.0) as sim:
        backlog_ids = {e["id"] for e in sim.events()[:30]}
        opened = datetime.now(timezone.utc)
        with stream(client, sim, params={"types": ""}) as response:
            live = [data_of(f) for f in Frames(response).take(6)]
        history = sim.events()
    ids = [e["id"] for e in live]
    assert not backlog_ids & set(ids)
    for event in live:
        assert parse_stamp(stamp_of(event)) >= opened - timedelta(milliseconds=5)
    # What this client saw is one contiguous run of the simulator's history.
    all_ids = [e["id"] for e in history]
    first = all_ids.index(ids[0])
    assert all_ids[first : first + len(ids)] == ids
    assert len(set(all_ids)) == len(all_ids)
    assert all(EVENT_ID.match(i) for i in all_ids)


def test_live_generation_issues_each_grants_token_with_it() -> None:
    # At 100 events a second most wake-ups are due one event: a grant.created still
    # comes with its token.issued, the token id made in the grant id's millisecond.
    with make(rate=100.0) as sim:
        deadline = time.monotonic() + 20
        while sim.event_count < 150:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        events = sim.events()
    created = {e["data"]["grantId"]: e for e in events if e["type"] == "grant.created"}
    assert len(created) > 20
    initial: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["type"] == "token.issued":
            grant_ms = ulid_ms(e["data"]["grantId"][5:])
            token_ms = ulid_ms(e["data"]["tokenId"][4:])
            assert grant_ms is not None and token_ms is not None
            if token_ms - grant_ms <= 2:
                initial[e["data"]["grantId"]] = e
    assert set(initial) == set(created)
    assert all(initial[g]["createdAt"] == e["createdAt"] for g, e in created.items())


def test_total_events_caps_live_generation() -> None:
    with make(rate=200.0, total_events=15) as sim:
        # Generation ends by itself once the cap is reached: wait for that, not a while.
        live = sim._live_thread
        assert live is not None
        live.join(timeout=5)
        assert not live.is_alive()
        assert sim.event_count == 15


@pytest.mark.parametrize(
    ("elapsed_s", "rate", "produced", "total", "due"),
    [
        (0.0, 10.0, 0, None, 0),  # the first event is due after 1/rate seconds
        (0.099, 10.0, 0, None, 0),
        (0.1, 10.0, 0, None, 1),
        (1.0, 10.0, 4, None, 6),  # behind schedule: catch up in one batch
        (1.0, 10.0, 10, None, 0),
        (1.0, 10.0, 12, None, 0),  # never negative
        (100.0, 1000.0, 0, None, 20_000),  # one batch never holds the GIL for long
        (1.0, 200.0, 10, 15, 5),  # never past total_events
        (1.0, 200.0, 15, 15, None),  # the cap reached: generation ends
        (1.0, 200.0, 16, 15, None),
        (0.0, 200.0, 0, 0, None),
    ],
)
def test_due_live_events(
    elapsed_s: float, rate: float, produced: int, total: int | None, due: int | None
) -> None:
    assert due_live_events(elapsed_s, rate, produced, total) == due


def test_large_replay_matches_history(client: httpx.Client) -> None:
    # Big enough for several 256 KiB writes, so chunk boundaries fall inside frames.
    with make(backlog=6000, keepalive=0.5) as sim:
        with stream(client, sim, params={"since": "2000-01-01T00:00:00Z"}) as response:
            frames = Frames(response).take(6000)
        assert [data_of(f) for f in frames] == sim.events()


def test_keepalive_comments_when_idle(client: httpx.Client) -> None:
    with make(keepalive=0.2) as sim, stream(client, sim) as response:
        started = time.monotonic()
        frames = Frames(response)
        assert frames.next() == b": keepalive"
        # Nothing at all is written on connect: the first bytes are the first keepalive.
        assert time.monotonic() - started >= 0.15
        assert frames.next() == b": keepalive"
        assert frames.buffer == b""


# --------------------------------------------------------------------------- faults


def test_drop_every_cuts_the_connection_mid_frame(client: httpx.Client) -> None:
    with make(backlog=30, drop_every=5) as sim:
        history = sim.events()
        for attempt in range(2):
            received = b""
            since = stamp_of(history[5 * attempt])
            with (
                pytest.raises(httpx.RemoteProtocolError),
                stream(client, sim, params={"since": since}) as response,
            ):
                for chunk in response.iter_raw():
                    received += chunk
            *complete, tail = received.split(b"\n\n")
            assert len(complete) == 5
            start = [e["id"] for e in history].index(data_of(complete[0])["id"])
            assert [data_of(f)["id"] for f in complete] == [
                e["id"] for e in history[start : start + 5]
            ]
            nxt = history[start + 5]
            assert tail.startswith(b'data: {"id":"' + nxt["id"].encode())
            assert 0 < len(tail) < len(b"data: " + json.dumps(nxt, separators=(",", ":")).encode())
        assert sim.stats.dropped == 2


def test_fail_statuses_then_success(client: httpx.Client) -> None:
    with make(backlog=3, fail_statuses=(429, 503), retry_after=2) as sim:
        url = sim.base_url + PATH
        first = client.get(url, headers=AUTH)
        assert first.status_code == 429
        assert first.headers["retry-after"] == "2"
        assert first.json()["code"] == "RATE_LIMITED"
        second = client.get(url, headers=AUTH)
        assert second.status_code == 503
        assert second.headers["retry-after"] == "2"
        assert second.json()["code"] == "SERVICE_UNAVAILABLE"
        with stream(client, sim, params={"since": sim.history_start.isoformat()}) as response:
            assert response.status_code == 200
            assert "retry-after" not in response.headers
            assert len(Frames(response).take(3)) == 3
        assert (sim.stats.requests, sim.stats.connections) == (3, 1)


def test_fail_always(client: httpx.Client) -> None:
    with make(fail_always=503, retry_after=0.5) as sim:
        url = sim.base_url + PATH
        assert client.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
        for _ in range(3):
            response = client.get(url, headers=AUTH)
            assert response.status_code == 503
            assert response.headers["retry-after"] == "0.5"
        assert sim.stats.connections == 0


def classify(frame: bytes) -> str:
    """Which MALFORMED_KINDS a frame is, or "good"."""
    payload = frame.removeprefix(b"data: ")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_utf8"
    try:
        value = json.loads(text)
    except ValueError:
        return "invalid_json"
    if not isinstance(value, dict):
        return "not_object"
    if "id" not in value:
        return "missing_id"
    if "type" not in value:
        return "missing_type"
    if not STAMP.match(str(value.get("createdAt"))):
        return "bad_timestamp"
    if not isinstance(value.get("data"), dict):
        return "data_not_object"
    return "good"


def test_malformed_every_cycles_through_kinds(client: httpx.Client) -> None:
    with make(backlog=30, malformed_every=2, keepalive=0.3) as sim:
        with stream(client, sim, params={"since": sim.history_start.isoformat()}) as response:
            frames = Frames(response).until_keepalive()
        kinds = [classify(f) for f in frames]
        assert len(kinds) == 45
        assert kinds[0::3] == ["good"] * 15
        assert kinds[1::3] == ["good"] * 15
        assert kinds[2::3] == [MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i in range(15)]
        good = [data_of(f) for f, kind in zip(frames, kinds, strict=True) if kind == "good"]
        # Malformed frames are neither history nor replayed.
        assert good == sim.events()
        assert sim.stats.malformed_sent == 15


# --------------------------------------------------------------------------- SSE fields


def test_emit_ids_retry_and_last_event_id(client: httpx.Client) -> None:
    with make(backlog=20, emit_ids=True, emit_retry=1500, keepalive=0.3) as sim:
        history = sim.events()
        with stream(client, sim, params={"since": sim.history_start.isoformat()}) as response:
            frames = Frames(response)
            assert frames.next() == b"retry: 1500"
            replay = frames.until_keepalive()
        assert len(replay) == 20
        for frame, event in zip(replay, history, strict=True):
            id_line, data_line = frame.split(b"\n")
            assert id_line == b"id: " + event["id"].encode()
            assert json.loads(data_line.removeprefix(b"data: ")) == event

        resume = {"Last-Event-ID": history[7]["id"]}
        with stream(client, sim, headers=resume) as response:
            frames = Frames(response)
            assert frames.next() == b"retry: 1500"
            ids = [data_of(f)["id"] for f in frames.until_keepalive()]
        assert ids == [e["id"] for e in history[8:]]

        # An unknown id falls back to `since`, or to live-only without it.
        unknown = {"Last-Event-ID": "evt_01ARZ3NDEKTSV4RRFFQ69G5FAV"}
        params = {"since": stamp_of(history[15])}
        with stream(client, sim, headers=unknown, params=params) as response:
            frames = Frames(response)
            frames.next()
            assert [data_of(f)["id"] for f in frames.until_keepalive()] == [
                e["id"] for e in history[15:]
            ]
        with stream(client, sim, headers=unknown) as response:
            frames = Frames(response)
            frames.next()
            assert frames.until_keepalive() == []


def test_sixth_concurrent_stream_is_429(client: httpx.Client) -> None:
    with make(keepalive=0.5) as sim, ExitStack() as streams:
        opened = [streams.enter_context(stream(client, sim)) for _ in range(5)]
        assert all(r.status_code == 200 for r in opened)
        refused = client.get(sim.base_url + PATH, headers=AUTH)
        assert refused.status_code == 429
        assert refused.json()["code"] == "TOO_MANY_CONNECTIONS"
        opened[0].close()
        # The server notices the hang-up while idle and frees the slot.
        deadline = time.monotonic() + 3
        while True:
            with stream(client, sim) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "slot was never released"
            time.sleep(0.05)
        assert sim.stats.connections == 6


# --------------------------------------------------------------------------- generation


def test_generate_events_is_deterministic() -> None:
    first = list(generate_events(7, START, 500, 0.25, "live"))
    assert first == list(generate_events(7, START, 500, 0.25, "live"))
    other = list(generate_events(8, START, 500, 0.25, "live"))
    assert [e["id"] for e in other] != [e["id"] for e in first]
    assert len(first) == 500
    ids = [e["id"] for e in first]
    assert len(set(ids)) == 500
    assert all(EVENT_ID.match(i) for i in ids)
    stamps = [parse_stamp(stamp_of(e)) for e in first]
    assert stamps[0] == START
    assert stamps == sorted(stamps)
    assert stamps[-1] - START <= timedelta(seconds=0.25 * 499)
    assert all(STAMP.match(stamp_of(e)) for e in first)


def test_backlog_is_generate_events() -> None:
    with make(seed=3, backlog=40, backlog_span=20.0) as sim:
        assert sim.events() == list(generate_events(3, sim.history_start, 40, 0.5, "live"))
        assert sim.history_start.tzinfo is not None
        assert sim.history_start.utcoffset() == timedelta(0)


def _by_type(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        grouped[event["type"]].append(event)
    return grouped


def test_documented_envelope_shapes() -> None:
    events = list(generate_events(11, START, 3000, 0.1, "documented"))
    assert all(set(e) == {"id", "type", "timestamp", "data"} for e in events)
    grouped = _by_type(events)
    for e in grouped["grant.created"]:
        assert set(e["data"]) == {"grantId", "agentId", "principalId", "scopes"}
        assert isinstance(e["data"]["scopes"], list)
    for e in grouped["grant.revoked"]:
        assert set(e["data"]) == {"grantId", "revokedBy"}
    assert {e["data"]["revokedBy"] for e in grouped["grant.revoked"]} == {
        "developer",
        "principal",
        "system",
    }
    for e in grouped["token.issued"]:
        assert set(e["data"]) == {"grantId", "tokenId", "method"}
    assert {e["data"]["method"] for e in grouped["token.issued"]} == {"exchange", "refresh"}
    for e in grouped["budget.threshold"]:
        data = e["data"]
        assert set(data) == {"grantId", "percentage", "remaining", "initial"}
        assert data["percentage"] in (50.0, 80.0) and isinstance(data["percentage"], float)
        assert isinstance(data["remaining"], float) and isinstance(data["initial"], float)
        assert 0 < data["remaining"] <= data["initial"] * 0.5
    for e in grouped["budget.exhausted"]:
        assert set(e["data"]) == {"grantId", "initial"}
        assert isinstance(e["data"]["initial"], float)
    # The documented contract's five types, plus the vault, SSO and passport events.
    assert set(grouped) == {
        "grant.created", "grant.revoked", "token.issued", "budget.threshold",
        "budget.exhausted", "vault.credential.stored", "sso.login", "passport.issued",
    }  # fmt: skip


def test_live_envelope_shapes_and_lifecycles() -> None:
    events = list(generate_events(11, START, 4000, 0.1, "live"))
    assert all(set(e) == {"id", "type", "createdAt", "data"} for e in events)
    grouped = _by_type(events)
    core = {"grantId", "agentId", "principalId", "scopes", "expiresAt"}
    delegated = 0
    for e in grouped["grant.created"]:
        extra = set(e["data"]) - core
        assert extra in (set(), {"delegationDepth", "parentGrantId"})
        delegated += bool(extra)
    assert delegated
    for e in grouped["token.issued"]:
        assert set(e["data"]) == {
            "tokenId", "grantId", "agentId", "principalId", "scopes", "expiresAt"
        }  # fmt: skip
    for e in grouped["budget.threshold"]:
        data = e["data"]
        assert set(data) == {"grantId", "pct", "remaining"}
        assert data["pct"] in (50, 80) and isinstance(data["pct"], int)
        assert re.fullmatch(r"\d+\.\d{4}", data["remaining"])
    for e in grouped["budget.exhausted"]:
        assert e["data"] == {"grantId": e["data"]["grantId"], "remaining": "0"}
    for e in grouped["grant.revoked"]:
        assert set(e["data"]) == {"grantId", "cascade"}
        assert isinstance(e["data"]["cascade"], bool)
    assert all(e["data"]["revokedGrants"] for e in grouped["anomaly.auto_revoked"])
    others = set(EVENT_TYPES) - {
        "grant.created", "grant.revoked", "token.issued", "budget.threshold",
        "budget.exhausted", "anomaly.auto_revoked",
    }  # fmt: skip
    assert others <= set(grouped)
    assert 0.01 < sum(len(grouped[t]) for t in others) / len(events) < 0.08

    # Lifecycles hang together and show the live service's quirks.
    created = {e["data"]["grantId"]: e for e in grouped["grant.created"]}
    position = {e["id"]: i for i, e in enumerate(events)}
    early_tokens = 0
    for e in grouped["token.issued"]:
        grant = created[e["data"]["grantId"]]
        if position[e["id"]] < position[grant["id"]]:
            early_tokens += 1
            assert e["createdAt"] == grant["createdAt"]
    assert early_tokens
    revoked = {e["data"]["grantId"] for e in grouped["grant.revoked"]}
    revoked |= {g for e in grouped["anomaly.auto_revoked"] for g in e["data"]["revokedGrants"]}
    # Consent-bundle grants have no grant.created.
    bundled = {e["data"]["grantId"] for e in grouped["consent_bundle.created"]}
    assert revoked <= set(created) | bundled
    assert 0.15 < len(revoked) / len(created) < 0.45
    budget = grouped["budget.threshold"] + grouped["budget.exhausted"]
    assert {e["data"]["grantId"] for e in budget} <= set(created)
    fifties = Counter(e["data"]["grantId"] for e in budget if e["data"].get("pct") == 50)
    assert max(fifties.values()) > 1
    with_thresholds = {e["data"]["grantId"] for e in grouped["budget.threshold"]}
    assert {e["data"]["grantId"] for e in grouped["budget.exhausted"]} - with_thresholds
    assert 20 <= len({e["data"]["agentId"] for e in created.values()}) <= 60
    assert len({e["data"]["principalId"] for e in created.values()}) > 150


def test_mixed_envelope_alternates_per_grant() -> None:
    events = list(generate_events(5, START, 1500, 0.1, "mixed"))
    keys: dict[str, set[str]] = defaultdict(set)
    for e in events:
        stamp_key = "createdAt" if "createdAt" in e else "timestamp"
        if "grantId" in e["data"]:
            keys[e["data"]["grantId"]].add(stamp_key)
    assert all(len(k) == 1 for k in keys.values())
    flavours = Counter(next(iter(k)) for k in keys.values())
    assert flavours["createdAt"] > 50 and flavours["timestamp"] > 50
    documented = [e for e in events if "timestamp" in e and e["type"] == "token.issued"]
    assert all(set(e["data"]) == {"grantId", "tokenId", "method"} for e in documented)


# --------------------------------------------------------------------------- lifecycle


def test_stop_is_idempotent_and_ends_serve_forever(client: httpx.Client) -> None:
    sim = make(keepalive=0.2)
    runner = threading.Thread(target=sim.serve_forever, daemon=True)
    runner.start()
    deadline = time.monotonic() + 5
    while True:
        try:
            url = sim.base_url
            break
        except RuntimeError:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    with stream(client, sim) as response:
        assert response.status_code == 200
        sim.stop()
        # The open stream is cut too, not left hanging.
        with pytest.raises(httpx.HTTPError):
            for _ in response.iter_raw():
                pass
    runner.join(timeout=5)
    assert not runner.is_alive()
    sim.stop()
    with pytest.raises(httpx.ConnectError):
        client.get(url + PATH, headers=AUTH)


# --------------------------------------------------------------------------- pure pieces


def test_public_names() -> None:
    import ingest.simulator

    assert all(hasattr(ingest.simulator, name) for name in ingest.simulator.__all__)
    assert STREAM_PATH == PATH
    assert ENVELOPES == ("live", "documented", "mixed")
    assert len(EVENT_TYPES) == len(set(EVENT_TYPES)) == 15
    assert len(MALFORMED_KINDS) == 7
    assert SimulatorStats() == SimulatorStats(0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    ("seed", "envelope", "digest"),
    [
        (1, "live", "10ddad0b960302a2d37cffe2fc5c48bb122c2b8c4dbc6aa2e4101080f3df7040"),
        (2, "documented", "2cec6ef1106fcea6708653de9b829a2cb2db5484506911f33be3dc673fa2684a"),
        (3, "mixed", "d7ab6e28edf52ef9ece52cde5d3ae17d077d5fc0373df70573cc8aa93b906447"),
    ],
)
def test_generated_events_are_pinned(seed: int, envelope: str, digest: str) -> None:
    # Benchmarks and archives built from a seed rely on the exact sequence; a deliberate
    # change to the generator updates these digests.
    hasher = hashlib.sha256()
    for event in generate_events(seed, START, 3000, 0.25, envelope):
        hasher.update(json.dumps(event, separators=(",", ":")).encode() + b"\n")
    assert hasher.hexdigest() == digest


def test_unknown_envelope_is_refused() -> None:
    with pytest.raises(ValueError, match="envelope"):
        next(generate_events(1, START, 1, 1.0, "legacy"))
    with pytest.raises(ValueError, match="envelope"):
        SimulatorConfig(api_key=KEY, envelope="legacy")


def test_fault_schedule() -> None:
    schedule = FaultSchedule((429, 503), None)
    assert [schedule.next() for _ in range(4)] == [429, 503, None, None]
    assert [FaultSchedule((), None).next() for _ in range(2)] == [None, None]
    always = FaultSchedule((429,), 502)
    assert [always.next() for _ in range(3)] == [502, 502, 502]


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, "RATE_LIMITED"),
        (500, "INTERNAL_ERROR"),
        (502, "BAD_GATEWAY"),
        (503, "SERVICE_UNAVAILABLE"),
        (504, "GATEWAY_TIMEOUT"),
        (418, "IM_A_TEAPOT"),
        (401, "UNAUTHORIZED"),
        (599, "ERROR"),
    ],
)
def test_fault_code(status: int, code: str) -> None:
    assert fault_code(status) == code


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_malformed_frame_kinds(kind: str) -> None:
    ms = 1_772_366_400_123  # 2026-03-01T12:00:00.123Z
    frame = malformed_frame(kind, "evt_01KJMNQ3FV0000000000000000", ms, "live")
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2
    assert classify(frame[:-2]) == kind
    documented = malformed_frame(kind, "evt_01KJMNQ3FV0000000000000000", ms, "documented")
    assert b"createdAt" not in documented
    if kind not in ("invalid_json", "not_object"):
        assert b'"timestamp":' in documented
    if kind not in ("invalid_json", "not_object", "bad_timestamp"):
        assert b'"2026-03-01T12:00:00.123Z"' in frame


def test_malformed_frames_cycle_kinds_with_fresh_ids() -> None:
    source = MalformedFrames(seed=9)
    frames = [source.next("live") for _ in range(2 * len(MALFORMED_KINDS))]
    assert [classify(f[:-2]) for f in frames] == list(MALFORMED_KINDS) * 2
    ids = re.findall(rb'"id":"(evt_[^"]+)"', b"".join(frames))
    assert len(ids) == len(set(ids)) > 0
    assert all(EVENT_ID.match(i.decode()) for i in ids if i != b"evt_x")


def test_torn_chunk_promises_the_whole_frame() -> None:
    frame = bytearray(b'data: {"id":"evt_1","type":"sso.login"}\n\n')
    torn = torn_chunk(frame)
    header, _, body = torn.partition(b"\r\n")
    assert int(header, 16) == len(frame)
    assert body == frame[: len(frame) // 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T12:00:00Z", "2026-03-01T12:00:00.000+00:00"),
        ("2026-03-01t12:00:00z", "2026-03-01T12:00:00.000+00:00"),
        ("2026-03-01", "2026-03-01T00:00:00.000+00:00"),
        ("2026-03-01 12:30", "2026-03-01T12:30:00.000+00:00"),
        ("2026-03-01T12:00:00.5Z", "2026-03-01T12:00:00.500+00:00"),
        ("2026-03-01T12:00:00,123Z", "2026-03-01T12:00:00.123+00:00"),
        # A sub-millisecond instant rounds up, so `ts >= since` stays exact.
        ("2026-03-01T12:00:00.1230001Z", "2026-03-01T12:00:00.124+00:00"),
        ("2026-03-01T12:00:00.123000Z", "2026-03-01T12:00:00.123+00:00"),
        ("2026-03-01T17:30:00+05:30", "2026-03-01T12:00:00.000+00:00"),
        ("2026-03-01T17:30:00+0530", "2026-03-01T12:00:00.000+00:00"),
        ("2026-03-01T07:00:00-05", "2026-03-01T12:00:00.000+00:00"),
        # An unencoded "+" arrives as a space.
        ("2026-03-01T17:30:00 05:30", "2026-03-01T12:00:00.000+00:00"),
        ("  2026-03-01T12:00:00Z  ", "2026-03-01T12:00:00.000+00:00"),
    ],
)
def test_parse_since_ms(text: str, expected: str) -> None:
    want = datetime.fromisoformat(expected)
    assert parse_since_ms(text) == (want - datetime(1970, 1, 1, tzinfo=timezone.utc)) // (
        timedelta(milliseconds=1)
    )


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "1",
        "",
        "2026-13-01",
        "2026-02-30T00:00:00Z",
        "2026-03-01T25:00:00Z",
        "2026-03-01T12:00:00+24:00",
        "2026-03-01T12:00:00+05:60",
        "2026-03-01T12:00:00Q",
    ],
)
def test_parse_since_ms_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_since_ms(text)


def test_parse_stream_query() -> None:
    created = EVENT_TYPES.index("grant.created")
    exhausted = EVENT_TYPES.index("budget.exhausted")
    assert parse_stream_query("") == (None, None)
    assert parse_stream_query("since=&types=") == (None, None)
    assert parse_stream_query("since=2026-03-01T00:00:00Z&since=") == (None, None)
    since = parse_stream_query("since=1970-01-01T00:00:01.5Z").since_ms
    assert since == 1500
    query = parse_stream_query("types=grant.created,nope&types=+budget.exhausted+")
    assert query == (None, frozenset({created, exhausted}))
    assert parse_stream_query("types=nope").allowed == frozenset()
    assert parse_stream_query("types=" + ",".join(EVENT_TYPES)).allowed is None
    with pytest.raises(ValueError, match="not an ISO 8601"):
        parse_stream_query("since=yesterday&types=grant.created")


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (f"Bearer {KEY}", True),
        (f"bearer {KEY}", True),
        (f"  BEARER   {KEY}  ", True),
        ("Bearer wrong", False),
        (f"Basic {KEY}", False),
        (KEY, False),
        ("", False),
        (None, False),
    ],
)
def test_bearer_matches(header: str | None, ok: bool) -> None:
    assert bearer_matches(header, KEY.encode()) is ok


def test_retry_after_text() -> None:
    assert retry_after_text(2) == "2"
    assert retry_after_text(2.0) == "2"
    assert retry_after_text(0.5) == "0.5"


def test_ulid_ms() -> None:
    source = UlidSource(random.Random(0))
    for ms in (0, 1, 1023, 1024, 1_772_366_400_123, 2**48 - 1):
        ulid = source(ms)
        assert len(ulid) == 26
        assert ulid_ms(ulid) == ms
        assert ulid_ms(ulid.lower()) == ms
    assert ulid_ms("01ARZ3NDEKTSV4RRFFQ69G5FA") is None  # too short
    assert ulid_ms("01ARZ3NDEKTSV4RRFFQ69G5FAU") is None  # U is not Crockford
    assert ulid_ms("81ARZ3NDEKTSV4RRFFQ69G5FAV") is None  # more than 128 bits


def _history(emit_ids: bool, count: int = 300) -> History:
    factory = EventFactory(4, "live", frame_ids=emit_ids)
    history = History(emit_ids)
    batch = Batch()
    made = 0
    while made < count:
        made += factory.emit(1_772_366_400_000 + made * 7, count - made)
    factory.flush(batch)
    history.append(batch)
    return history


def test_history_start_index() -> None:
    history = _history(emit_ids=True)
    events = [history.envelope(i) for i in range(history.count)]
    assert history.start_index(None, None) == history.count
    for index in (0, 1, 150, history.count - 1):
        event_id = events[index]["id"]
        assert history.start_index(None, event_id) == index + 1
        assert history.start_index(None, f" {event_id.lower()} ") == index + 1
    since = parse_since_ms(events[100]["createdAt"])
    first = min(i for i, e in enumerate(events) if e["createdAt"] >= events[100]["createdAt"])
    assert history.start_index(since, None) == first
    # An unknown id falls back to `since`, and to the end (live only) without it.
    for unknown in ("evt_01ARZ3NDEKTSV4RRFFQ69G5FAV", "evt_nope", "grnt_x", ""):
        assert history.start_index(since, unknown) == first
        assert history.start_index(None, unknown) == history.count


def test_history_ignores_last_event_id_without_ids() -> None:
    history = _history(emit_ids=False)
    event_id = history.envelope(10)["id"]
    assert history.start_index(None, event_id) == history.count
    assert history.start_index(0, event_id) == 0
