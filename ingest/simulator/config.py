"""A simulator's settings (:class:`SimulatorConfig`) and counters (:class:`SimulatorStats`).

The settings are validated once, on construction; the counters are what tests and the
CLI read back about the requests, streams, events and faults served.
"""

from __future__ import annotations

from dataclasses import dataclass

from .generator import ENVELOPES

REPLAY_MODES: tuple[str, ...] = ("since", "none")
# The only types a Grantex webhook can subscribe to.
WEBHOOK_TYPES: tuple[str, ...] = ("grant.created", "grant.revoked", "token.issued")


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves; the defaults mimic the live Grantex service.

    ``backlog`` events are generated at start, spread over the ``backlog_span`` seconds
    before it (replayed only for ``since``); live events follow at ``rate`` per second
    (up to ``total_events``). ``envelope`` is "live", "documented" or "mixed" (alternating
    per grant). Faults: ``drop_every`` cuts each connection mid-frame after that many
    events; ``fail_statuses`` answers the first stream requests with those statuses,
    ``fail_always`` every one (both with ``Retry-After: retry_after`` when set);
    ``malformed_every`` slips a malformed frame (cycling through MALFORMED_KINDS) after
    that many good ones. ``emit_ids`` adds ``id:`` fields and honours Last-Event-ID;
    ``emit_retry`` writes ``retry: <ms>`` when a stream opens.

    Live-service behaviours: ``replay`` "none" ignores ``since`` and Last-Event-ID (a
    stream carries only what is emitted after its request; what is emitted while no
    client listens is lost); ``hold_headers`` sends the status line and headers only
    with the first event or keepalive; ``subscribe_delay`` is how long after its request
    a stream is subscribed (with ``replay`` "none", what is emitted before then is not
    sent to it, as the service loses events published while a client subscribes);
    ``leaked_slots`` stream slots are taken from the
    start, as after a crash, until the counter expires (``slot_ttl`` seconds without a
    request or keepalive). ``webhook_url`` receives ``webhook_types`` events signed
    with ``webhook_secret``, retried on the service's schedule multiplied by
    ``time_scale``. The read endpoints allow ``rest_rate_limit`` requests a minute
    (a minute times ``time_scale``), as the service's free plan.
    """

    api_key: str
    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    backlog: int = 0
    backlog_span: float = 86400.0
    rate: float = 10.0
    total_events: int | None = None
    envelope: str = "live"
    keepalive: float = 30.0
    max_connections: int = 5
    drop_every: int | None = None
    fail_statuses: tuple[int, ...] = ()
    fail_always: int | None = None
    retry_after: float | None = None
    malformed_every: int | None = None
    emit_ids: bool = False
    emit_retry: int | None = None
    replay: str = "since"
    hold_headers: bool = False
    subscribe_delay: float = 0.0
    leaked_slots: int = 0
    slot_ttl: float = 300.0
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_types: tuple[str, ...] = WEBHOOK_TYPES
    time_scale: float = 1.0
    rest_rate_limit: int = 100

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}, got {self.envelope!r}")
        if min(self.backlog, self.rate, self.backlog_span, self.keepalive) < 0:
            raise ValueError("backlog, backlog_span, rate and keepalive must be >= 0")
        if self.subscribe_delay < 0:
            raise ValueError("subscribe_delay must be >= 0")
        for name in ("drop_every", "malformed_every", "total_events"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "total_events" else 1):
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if self.replay not in REPLAY_MODES:
            raise ValueError(f"replay must be one of {REPLAY_MODES}, got {self.replay!r}")
        if not 0 <= self.leaked_slots <= self.max_connections:
            raise ValueError("leaked_slots must be between 0 and max_connections")
        if self.slot_ttl <= 0 or self.time_scale <= 0 or self.rest_rate_limit < 1:
            raise ValueError("slot_ttl, time_scale and rest_rate_limit must be > 0")
        self._check_webhook()

    def _check_webhook(self) -> None:
        if self.webhook_url is None:
            return
        if not self.webhook_url.startswith(("http://", "https://")):
            raise ValueError("webhook_url must be an http:// or https:// URL")
        if not self.webhook_secret:
            raise ValueError("a webhook needs a secret")
        unknown = sorted(set(self.webhook_types) - set(WEBHOOK_TYPES))
        if unknown or not self.webhook_types:
            raise ValueError(f"webhook types must be among {WEBHOOK_TYPES}, got {unknown}")


@dataclass
class SimulatorStats:
    """What the simulator has served so far; updated under the simulator's lock."""

    requests: int = 0  # every GET of the stream path, whatever its answer
    connections: int = 0  # streams answered 200
    active: int = 0  # streams open right now
    refused: int = 0  # stream requests answered 429 TOO_MANY_CONNECTIONS
    rest_requests: int = 0  # GETs of the read endpoints, whatever their answer
    events_sent: int = 0  # well-formed event frames written in full, all connections
    malformed_sent: int = 0
    dropped: int = 0  # connections cut mid-frame by drop_every
