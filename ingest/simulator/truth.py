"""What really happened in a generated stream: which grants ended revoked, and token kinds.

The generator knows what the stream only implies. With a :class:`TruthLog` attached it
notes each grant's first revocation (when, by which path, by whom, in which event) and
the kind of every token it issues; :func:`collect` turns the notes and the rendered
frames into a :class:`GroundTruth`. ``generator.ground_truth`` is the entry point.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from .ids import ms_to_datetime

VIAS: tuple[str, ...] = (
    "direct",  # grant.revoked (developer API or the principal's consent page)
    "cascade",  # a descendant taken out by its ancestor's grant.revoked
    "anomaly",  # anomaly.auto_revoked
    "consent_bundle",  # consent_bundle.revoked with revokeGrant true
    "consent_withdrawal",  # dpdp.consent.withdrawn with grantRevoked true
    "erasure",  # dpdp.erasure.completed
)
"""How a grant can end revoked."""

TOKEN_KINDS: tuple[str, ...] = ("exchange", "delegation", "refresh")


class TruthLog:
    """Notes taken while generating: revocations in event order, token kinds by token id.

    A revocation is ``(grant id, ms, via, actor, position)``, ``position`` being the
    index of the revoking event in the generated sequence.
    """

    __slots__ = ("revocations", "tokens")

    def __init__(self) -> None:
        self.revocations: list[tuple[str, int, str, str, int]] = []
        self.tokens: dict[str, str] = {}


@dataclass(frozen=True)
class Revocation:
    """A grant's first revocation.

    ``actor`` is who did it: ``developer``, ``principal`` or ``system`` (a cascade has
    its root's). On the live envelope a direct or cascading revocation does not say
    whether the developer or the principal asked for it; the generator still knows.
    """

    grant_id: str
    revoked_at: datetime
    via: str
    actor: str
    event_id: str  # the event that revoked it (the root's grant.revoked for a cascade)


@dataclass(frozen=True)
class GroundTruth:
    """Every revoked grant (first revocation) and the kind of every issued token."""

    revocations: dict[str, Revocation]
    token_kinds: dict[str, str]  # token id -> exchange | delegation | refresh


def collect(log: TruthLog, batches: Iterable[list[str]]) -> GroundTruth:
    """Consume the rendered frames of a generation run and resolve the log's event ids."""
    notes = log.revocations
    revocations: dict[str, Revocation] = {}
    index = 0
    start = 0
    for frames in batches:
        end = start + len(frames)
        while index < len(notes) and notes[index][4] < end:
            grant_id, ms, via, actor, position = notes[index]
            frame = frames[position - start]
            event_id = json.loads(frame[frame.index("data: ") + 6 : -2])["id"]
            revocations[grant_id] = Revocation(grant_id, ms_to_datetime(ms), via, actor, event_id)
            index += 1
        start = end
    return GroundTruth(revocations, dict(log.tokens))
