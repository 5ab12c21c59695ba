"""A simulator's settings (:class:`SimulatorConfig`) and counters (:class:`SimulatorStats`).

The settings are validated once, on construction; the counters are what tests and the
CLI read back about the requests, streams, events and faults served.
"""

from __future__ import annotations

from dataclasses import dataclass

from .generator import ENVELOPES


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

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        if self.envelope not in ENVELOPES:
            raise ValueError(f"envelope must be one of {ENVELOPES}, got {self.envelope!r}")
        if self.backlog < 0 or self.rate < 0 or self.backlog_span < 0 or self.keepalive < 0:
            raise ValueError("backlog, backlog_span, rate and keepalive must be >= 0")
        for name in ("drop_every", "malformed_every", "total_events"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "total_events" else 1):
                raise ValueError(f"{name} must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")


@dataclass
class SimulatorStats:
    """What the simulator has served so far; updated under the simulator's lock."""

    requests: int = 0  # every GET of the stream path, whatever its answer
    connections: int = 0  # streams answered 200
    active: int = 0  # streams open right now
    events_sent: int = 0  # well-formed event frames written in full, all connections
    malformed_sent: int = 0
    dropped: int = 0  # connections cut mid-frame by drop_every
