"""Grantex webhook signatures, checked over the raw body before anything parses it.

Pure: the time comes in as an argument. The service signs each attempt with
``X-Grantex-Signature-V2: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``
and ``X-Grantex-Timestamp`` (unix seconds, set per attempt, so a retry minutes
later is fresh); the legacy ``X-Grantex-Signature`` covers the body alone and
never expires, so it is accepted only when asked for and only from a delivery
that carries no V2 signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

V2_HEADER = "x-grantex-signature-v2"
LEGACY_HEADER = "x-grantex-signature"
TIMESTAMP_HEADER = "x-grantex-timestamp"
DEFAULT_TOLERANCE = 300.0
"""Seconds a delivery's timestamp may differ from the receiver's clock, either way."""

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[bytes],
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_legacy: bool = False,
) -> str | None:
    """None when one of ``secrets`` signed this delivery; otherwise why not.

    ``headers`` are looked up by lower-case name. The reason names headers,
    never a secret or a digest.
    """
    v2 = headers.get(V2_HEADER)
    if v2 is None:
        if headers.get(LEGACY_HEADER) is None:
            return "no X-Grantex-Signature-V2 header"
        if not allow_legacy:
            return "only a legacy X-Grantex-Signature (accepted with --allow-legacy-signature)"
        return _check(headers[LEGACY_HEADER], body, secrets, "X-Grantex-Signature")
    stamp = headers.get(TIMESTAMP_HEADER)
    if stamp is None:
        return "X-Grantex-Signature-V2 without X-Grantex-Timestamp"
    if not _TIMESTAMP.fullmatch(stamp):
        return "X-Grantex-Timestamp is not unix seconds"
    skew = now - int(stamp)
    if abs(skew) > tolerance:
        when = "old" if skew > 0 else "far in the future"
        return f"X-Grantex-Timestamp is {abs(skew):.0f}s {when} (tolerance {tolerance:g}s)"
    return _check(v2, stamp.encode("ascii") + b"." + body, secrets, "X-Grantex-Signature-V2")


def _check(header: str, signed: bytes, secrets: Sequence[bytes], name: str) -> str | None:
    match = _SIGNATURE.fullmatch(header.strip())
    if match is None:
        return f"{name} is not sha256=<64 hex digits>"
    given = match.group(1).lower().encode("ascii")
    # Every secret is tried (rotation); each comparison takes constant time.
    matched = [
        hmac.compare_digest(hmac.new(secret, signed, hashlib.sha256).hexdigest().encode(), given)
        for secret in secrets
    ]
    return None if any(matched) else f"{name} does not match any configured secret"


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The V2 header value the service sends (for tests and the simulator)."""
    return (
        "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )


def sign_legacy(secret: bytes, body: bytes) -> str:
    """The legacy header value: the body alone, no replay bound."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
