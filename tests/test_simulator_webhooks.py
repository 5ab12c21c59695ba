"""The simulator's webhook deliveries, POSTed over real HTTP to a receiver on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from ingest.simulator import Simulator, SimulatorConfig
from ingest.simulator.webhooks import (
    USER_AGENT,
    delivery_headers,
    retry_delay,
    sign_legacy,
    sign_v2,
)
from tests.conftest import spawn
from tests.test_simulator import AUTH, KEY, PATH

pytestmark = pytest.mark.timeout(60)

SECRET = "0123456789abcdef0123456789abcdef0123456789abcdef"
WEBHOOK_TYPES = {"grant.created", "grant.revoked", "token.issued"}


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every POST; ``fail(body, attempt)`` says which to answer 500."""

    fail: Callable[[bytes, int], bool] = lambda body, attempt: False
    posts: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        with self.lock:
            attempt = sum(1 for p in self.posts if p.body == body) + 1
            self.posts.append(Received(time.monotonic(), dict(handler.headers.items()), body))
        status = 500 if self.fail(body, attempt) else 204
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [p.body for p in self.posts]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recorder = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            recorder.handle(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    recorder.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def make(url: str, **overrides: Any) -> Simulator:
    settings: dict[str, Any] = {
        "api_key": KEY, "rate": 200.0, "total_events": 60, "keepalive": 0.3,
        "webhook_url": url, "webhook_secret": SECRET, "time_scale": 0.01,
    }  # fmt: skip
    settings.update(overrides)
    return Simulator(SimulatorConfig(**settings))


def wait_until(check: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def settled(sim: Simulator) -> bool:
    """Every lifecycle event emitted live so far has a delivery, and none is pending."""
    webhook = sim.webhook
    assert webhook is not None
    deliveries = webhook.deliveries()
    live = sim.events()[sim.config.backlog :]
    due = sum(1 for e in live if e["type"] in WEBHOOK_TYPES)
    return len(deliveries) == due > 0 and all(d.status != "pending" for d in deliveries)


def test_retry_schedule_is_the_services() -> None:
    assert [retry_delay(n) for n in range(1, 6)] == [30, 60, 120, 240, None]
    assert [retry_delay(n, 0.01) for n in range(1, 5)] == pytest.approx([0.3, 0.6, 1.2, 2.4])


def test_signatures_follow_the_service() -> None:
    body = b'{"id":"evt_1","type":"grant.created"}'
    mac = hmac.new(SECRET.encode(), b"1767225600." + body, hashlib.sha256).hexdigest()
    assert sign_v2(SECRET, "1767225600", body) == "sha256=" + mac
    legacy = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert sign_legacy(SECRET, body) == "sha256=" + legacy
    headers = delivery_headers(SECRET, body, 1767225600.9)
    assert headers["X-Grantex-Timestamp"] == "1767225600"
    assert headers["X-Grantex-Signature-V2"] == "sha256=" + mac
    assert headers["User-Agent"] == USER_AGENT == "Grantex-Webhooks/0.1"


def test_lifecycle_events_are_delivered_as_the_stream_sends_them(receiver: Receiver) -> None:
    with make(receiver.url, backlog=40) as sim, httpx.Client(timeout=5) as client:
        params = {"since": "2000-01-01T00:00:00Z"}
        with client.stream("GET", sim.base_url + PATH, headers=AUTH, params=params) as stream:
            frames: list[bytes] = []
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    frames.append(line[6:].encode())
                if len(frames) == 100:
                    break
        wait_until(lambda: settled(sim))
        events = sim.events()
        live = events[40:]
        expected = [f for f, e in zip(frames[40:], live, strict=True) if e["type"] in WEBHOOK_TYPES]
        assert expected and sorted(receiver.bodies()) == sorted(expected)  # the exact JSON
        backlog_ids = {e["id"] for e in events[:40]}
        assert not any(e["id"].encode() in b for e in events[:40] for b in receiver.bodies())
        assert backlog_ids
        for post in receiver.posts:
            timestamp = post.headers["X-Grantex-Timestamp"]
            assert abs(int(timestamp) - time.time()) < 30
            assert post.headers["X-Grantex-Signature-V2"] == sign_v2(SECRET, timestamp, post.body)
            assert post.headers["X-Grantex-Signature"] == sign_legacy(SECRET, post.body)
            assert post.headers["User-Agent"] == "Grantex-Webhooks/0.1"
            assert post.headers["Content-Type"] == "application/json"
        webhook = sim.webhook
        assert webhook is not None
        assert {d.status for d in webhook.deliveries()} == {"delivered"}


def test_failed_attempts_are_retried_on_the_scaled_schedule(receiver: Receiver) -> None:
    receiver.fail = lambda body, attempt: attempt <= 3
    with make(receiver.url, total_events=4) as sim:
        wait_until(lambda: settled(sim))
        webhook = sim.webhook
        assert webhook is not None
        deliveries = webhook.deliveries()
    assert deliveries and all(d.status == "delivered" and d.attempts == 4 for d in deliveries)
    first = deliveries[0].payload
    times = [p.at for p in receiver.posts if p.body == first]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    for gap, expected in zip(gaps, (0.3, 0.6, 1.2), strict=True):
        assert expected <= gap < expected + 0.5


def test_a_delivery_fails_after_five_attempts(receiver: Receiver) -> None:
    receiver.fail = lambda body, attempt: True
    with make(receiver.url, total_events=2, time_scale=0.001) as sim:
        wait_until(lambda: settled(sim))
        webhook = sim.webhook
        assert webhook is not None
        deliveries = webhook.deliveries()
    assert all(d.status == "failed" and d.attempts == 5 for d in deliveries)
    assert all(d.last_error == "HTTP 500" for d in deliveries)
    assert set(Counter(receiver.bodies()).values()) == {5}


def test_a_receiver_that_is_down_gets_the_event_when_it_returns(receiver: Receiver) -> None:
    down = threading.Event()
    down.set()
    receiver.fail = lambda body, attempt: down.is_set()
    with make(receiver.url, total_events=2, time_scale=0.005) as sim:
        wait_until(lambda: len(receiver.posts) >= 4)
        down.clear()
        wait_until(lambda: settled(sim))
        webhook = sim.webhook
        assert webhook is not None
        assert {d.status for d in webhook.deliveries()} == {"delivered"}


def test_deliveries_are_the_same_for_a_seed(receiver: Receiver) -> None:
    """One delivery per lifecycle event, in log order, with ids drawn from the seed.

    Which events a live run makes depends on how its batches fall on the clock; what the
    deliverer does with them does not.
    """
    runs = []
    for _ in range(2):
        with make(receiver.url, total_events=10, seed=5) as sim:
            wait_until(lambda sim=sim: sim.event_count == 10 and settled(sim))  # type: ignore[misc]
            webhook = sim.webhook
            assert webhook is not None
            deliveries = webhook.deliveries()
            lifecycle = [e for e in sim.events() if e["type"] in WEBHOOK_TYPES]
            assert [(d.event_id, d.event_type) for d in deliveries] == [
                (e["id"], e["type"]) for e in lifecycle
            ]
            # ULID times follow the clock; the random parts follow the seed.
            runs.append([d.id[-16:] for d in deliveries])
    shared = min(len(runs[0]), len(runs[1]))
    assert shared and runs[0][:shared] == runs[1][:shared]


def test_webhook_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="secret"):
        SimulatorConfig(api_key=KEY, webhook_url="http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="webhook types"):
        SimulatorConfig(
            api_key=KEY, webhook_url="http://127.0.0.1:1/", webhook_secret=SECRET,
            webhook_types=("budget.exhausted",),
        )  # fmt: skip


def test_simulate_command_delivers_webhooks(receiver: Receiver) -> None:
    args = ["simulate", "--port", "0", "--backlog", "0", "--rate", "100", "--total-events", "20"]
    env = {"GRANTEX_WEBHOOK_SECRET": SECRET}
    proc = spawn([*args, "--webhook-url", receiver.url, "--time-scale", "0.01"], env=env)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        proc.stdout.readline()
        assert proc.stdout.readline().startswith("Webhook wh_")
        wait_until(lambda: len(receiver.posts) > 0)
        post = receiver.posts[0]
        timestamp = post.headers["X-Grantex-Timestamp"]
        assert post.headers["X-Grantex-Signature-V2"] == sign_v2(SECRET, timestamp, post.body)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert SECRET not in out + err


def test_the_webhook_and_its_deliveries_are_listed(receiver: Receiver) -> None:
    receiver.fail = lambda body, attempt: b'"type":"grant.created"' in body
    with make(receiver.url, total_events=40, time_scale=0.001) as sim:
        wait_until(lambda: sim.event_count == 40 and settled(sim))
        get = httpx.Client(base_url=sim.base_url, headers=AUTH, timeout=5).get
        hooks = get("/v1/webhooks").json()["webhooks"]
        assert [h["url"] for h in hooks] == [receiver.url]
        assert set(hooks[0]["events"]) == WEBHOOK_TYPES
        path = f"/v1/webhooks/{hooks[0]['id']}/deliveries"
        pages = [get(path, params={"page": n, "pageSize": 4}).json() for n in (1, 2, 3)]
        listed = [d for page in pages for d in page["deliveries"]]
        webhook = sim.webhook
        assert webhook is not None
        newest = list(reversed(webhook.deliveries()))
        assert pages[0]["total"] == len(newest) and pages[0]["pageSize"] == 4
        assert [d["id"] for d in listed] == [d.id for d in newest[:12]]
        failed = get(path, params={"status": "failed", "pageSize": 500}).json()
        assert failed["pageSize"] == 100
        assert {d["eventType"] for d in failed["deliveries"]} == {"grant.created"}
        assert all(d["attempts"] == 5 and d["deliveredAt"] is None for d in failed["deliveries"])
        delivered = get(path, params={"status": "delivered"}).json()["deliveries"]
        assert all(d["deliveredAt"] and d["lastError"] is None for d in delivered)
        assert get(path, params={"status": "odd"}).status_code == 400
        assert get("/v1/webhooks/wh_other/deliveries").status_code == 404
