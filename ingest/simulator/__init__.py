"""A Grantex-compatible Server-Sent Events producer for tests, benchmarks and demos.

It serves ``GET /v1/events/stream`` on a local port, stdlib only, and behaves like the
live Grantex service: bare ``data:`` frames, ``: keepalive`` comments, fire-and-forget
ordering, and a per-key counter of at most five streams that a crash leaks
(:mod:`.slots`). With ``replay="none"`` and ``hold_headers`` it also keeps no history and
holds its headers back as the live service does; by default it replays history for
``since`` (the documented contract). It can inject faults.

The package is split by responsibility:

- :mod:`.generator` -- the deterministic event generator (:func:`generate_events`), built
  on :mod:`.grants` (grant lifecycles, delegation, cascades, anomalies), :mod:`.consents`
  (consent bundles, DPDP records, withdrawals and erasures), :mod:`.plans` (what happens
  to a grant) and :mod:`.ids` (ULIDs and timestamps as text); :func:`ground_truth` says
  what happened in a generated stream (:mod:`.truth`: which grants ended revoked, when
  and how, and which tokens were refreshes);
- :mod:`.history` -- the append-only log of rendered frames that backlog and live events
  go into, and that every stream reads from;
- :mod:`.server` -- :class:`Simulator` (lifecycle, live generation, request policy),
  configured by :mod:`.config`, over :mod:`.handler` (HTTP plumbing) and
  :mod:`.streaming` (writing a stream);
- :mod:`.faults` -- injected failures, malformed frames and drops;
- :mod:`.webhooks` -- signed webhook deliveries on the service's retry schedule;
- :mod:`.state` and :mod:`.rest` -- the service's read endpoints (grants, compliance
  export, consent bundles, DPDP records, budget allocations, webhook deliveries) over
  the state the events imply, with paging and the plan rate limit.
"""

from .config import SimulatorConfig, SimulatorStats
from .faults import MALFORMED_KINDS
from .generator import ENVELOPES, EVENT_TYPES, generate_events, ground_truth
from .handler import STREAM_PATH
from .server import Simulator
from .truth import TOKEN_KINDS, VIAS, GroundTruth, Revocation

__all__ = [
    "ENVELOPES",
    "EVENT_TYPES",
    "MALFORMED_KINDS",
    "STREAM_PATH",
    "TOKEN_KINDS",
    "VIAS",
    "GroundTruth",
    "Revocation",
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "generate_events",
    "ground_truth",
]
