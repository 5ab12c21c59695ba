"""A second checker of digest files, written from docs/integrity.md ("Digest files") alone.

Standard library only, Ed25519 included: the signature check is RFC 8032's
verification (section 5.1.7) in plain integers, so that an auditor without
the product or a cryptography package can check a signed directory. Wherever
this module and ``grantex-archive verify-archive --digest-dir`` disagree,
either the product or the document is wrong.

Run it: ``python tests/independent_digests.py ARCHIVE.db DIGEST_DIR [PUBLIC_KEY.pem]``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

FORMAT = "grantex-archive/digest/v1"
PREFIX = "grantex-archive-digest-"
LATE = timedelta(hours=2)  # links this long after the newest file: newer files are missing

# -- Ed25519 verification (RFC 8032, 5.1.7), integers only ---------------------

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T)


def _add(a: Point, b: Point) -> Point:
    e1 = (a[1] - a[0]) * (b[1] - b[0]) % P
    e2 = (a[1] + a[0]) * (b[1] + b[0]) % P
    c, d = 2 * a[3] * b[3] * D % P, 2 * a[2] * b[2] % P
    e, f, g, h = e2 - e1, d - c, d + c, e2 + e1
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _times(s: int, point: Point) -> Point:
    result: Point = (0, 1, 1, 0)
    while s:
        if s & 1:
            result = _add(result, point)
        point, s = _add(point, point), s >> 1
    return result


def _decode(data: bytes) -> Point | None:
    """A point from its 32-byte encoding; None when it is not one."""
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P or (x == 0 and sign):
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


BASE = _decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    a, r = _decode(public), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or BASE is None or len(signature) != 64 or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    left, right = _times(s, BASE), _add(r, _times(h, a))
    return (left[0] * right[2] - right[0] * left[2]) % P == 0 and (
        left[1] * right[2] - right[1] * left[2]
    ) % P == 0


def public_key_from_pem(text: str) -> bytes:
    """The raw 32-byte key of an Ed25519 SubjectPublicKeyInfo PEM (a fixed 12-byte prefix)."""
    body = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
    der = base64.b64decode(body)
    if len(der) != 44 or der[:12] != bytes.fromhex("302a300506032b6570032100"):
        raise ValueError("not an Ed25519 public key")
    return der[12:]


# -- the files -------------------------------------------------------------------


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _utc(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def check(archive: str | Path, directory: str | Path, public: bytes | None = None) -> list[str]:
    """Every difference between a digest directory and a SQLite archive's links."""
    paths = sorted(p for p in Path(directory).glob(f"{PREFIX}*.json") if p.is_file())
    if not paths:
        return [f"no digest file in {directory}"]
    db = sqlite3.connect(f"file:{archive}?mode=ro", uri=True)
    try:
        problems: list[str] = []
        previous: Path | None = None
        for path in paths:
            problems += _check_file(db, path, previous, public)
            previous = path
        problems += _check_late(db, paths[-1])
        return problems
    finally:
        db.close()


def _check_file(
    db: sqlite3.Connection, path: Path, previous: Path | None, public: bytes | None
) -> list[str]:
    name, data = path.name, path.read_bytes()
    try:
        document = json.loads(data)
        assert isinstance(document, dict) and document.get("format") == FORMAT
    except (ValueError, AssertionError):
        return [f"digest file {name} is not a digest file of this format"]
    problems = []
    if data != canonical_json(document) + b"\n":
        problems.append(f"digest file {name} was edited (it is not in its canonical form)")
    problems += _check_previous(name, document.get("previous"), previous)
    if public is not None:
        unsigned = {k: v for k, v in document.items() if k != "signature"}
        if not isinstance(document.get("signature"), str):
            problems.append(f"digest file {name} is not signed")
        elif not ed25519_verify(
            public, canonical_json(unsigned), base64.b64decode(document["signature"])
        ):
            problems.append(f"digest file {name} has a bad signature (not made by this key)")
    n, recorded = document["head"]["n"], document["head"]["hash"]
    if n > 0:
        stored = db.execute("SELECT hash FROM chain_links WHERE n = ?", (n,)).fetchone()
        if stored is None:
            problems.append(f"digest file {name} names link {n}, which the archive does not have")
        elif stored[0] != recorded:
            problems.append(
                f"link {n} hashes to {stored[0][:16]}... in the archive, but digest file {name} "
                f"recorded {recorded[:16]}...: the chain was rewritten up to link {n}"
            )
    return problems


def _check_previous(name: str, named: Any, previous: Path | None) -> list[str]:
    if named is not None and (previous is None or named["file"] != previous.name):
        return [f"digest file {named['file']} is missing (digest file {name} names it)"]
    if previous is None:
        return []
    if named is None:
        return [f"digest file {name} names no previous file, but {previous.name} precedes it"]
    if named["sha256"] != hashlib.sha256(previous.read_bytes()).hexdigest():
        return [
            f"digest file {previous.name} was altered (digest file {name} recorded another SHA-256)"
        ]
    return []


def _check_late(db: sqlite3.Connection, newest: Path) -> list[str]:
    document = json.loads(newest.read_bytes())
    covered = document["head"]["n"]
    last_n, last_at = db.execute(
        "SELECT max(n), max(created_at) FROM chain_links WHERE n > ?", (covered,)
    ).fetchone()
    if last_n is None or _utc(last_at) - _utc(document["created_at"]) <= LATE:
        return []
    shown = _utc(last_at).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        f"links {covered + 1} to {last_n} (up to {shown}) are in no digest file; the newest, "
        f"{newest.name}, is from {document['created_at']}: digest files are missing, or "
        "commands ran without --digest-dir"
    ]


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(
            "usage: independent_digests.py ARCHIVE.db DIGEST_DIR [PUBLIC_KEY.pem]", file=sys.stderr
        )
        return 2
    public = public_key_from_pem(Path(argv[2]).read_text()) if len(argv) == 3 else None
    problems = check(argv[0], argv[1], public)
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{argv[1]}: verified")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
