"""Digest files: the chain head, written outside the database, chained and optionally signed.

The CloudTrail model. A command that writes links writes, with
``--digest-dir DIR``, one digest file when it ends and one at least every
:data:`INTERVAL` while it runs: the chain head (link number and hash), the
links and rows added since the previous file, that file's name and SHA-256,
the tool's version and the time; with ``--signing-key`` an Ed25519 signature
over the file's canonical JSON. Someone who can write the database but not
the directory (another host, WORM storage) or the key cannot rewrite the
chain consistently: the files still name the old hashes.

A file is canonical JSON (keys sorted, no spaces, UTF-8, one trailing
newline); its signature covers the same form without the ``signature`` key.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..schema import chain_head, chain_links
from .canonical import timestamp
from .verify import Problem

log = logging.getLogger("grantex_archive.seal")

FORMAT = "grantex-archive/digest/v1"
PREFIX = "grantex-archive-digest-"
INTERVAL = 3600.0
"""Seconds between two digest files of a running command, at most."""

LOCK_NAME = ".grantex-archive-digest.lock"


class DigestError(Exception):
    """A digest directory or key that cannot be used."""


def canonical_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def tool_version() -> str:
    try:
        return version("grantex-archive")
    except PackageNotFoundError:
        return "unknown"


# -- keys ----------------------------------------------------------------------


def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from a PEM file (PKCS#8, unencrypted)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise DigestError(f"cannot read the signing key {path}: {_why(exc)}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DigestError(f"the signing key {path} is not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Any:
    """An Ed25519 public key from a PEM file (SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise DigestError(f"cannot read the public key {path}: {_why(exc)}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise DigestError(f"the public key {path} is not an Ed25519 key")
    return key


def _why(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).split("\n")[0]


def key_id(public_key: Any) -> str:
    """The SHA-256 of the raw public key, in hex: names the key a file was signed with."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# -- writing -------------------------------------------------------------------


def digest_files(directory: Path) -> list[Path]:
    """The digest files of a directory, oldest first (their names sort by time)."""
    return sorted(p for p in directory.glob(f"{PREFIX}*.json") if p.is_file())


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """One writer at a time per directory (ingest and receive may share one)."""
    with open(directory / LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Head:
    n: int
    hash: str
    created_at: str


def _read_head(engine: Engine) -> Head:
    with engine.connect() as conn:
        n, digest = conn.execute(sa.select(chain_head.c.n, chain_head.c.hash)).one()
        at = conn.execute(sa.select(chain_links.c.created_at).where(chain_links.c.n == n)).scalar()
    return Head(int(n), str(digest), timestamp(at) if at is not None else "")


def _covered(engine: Engine, first: int, last: int) -> dict[str, int]:
    """Links and rows per kind in links ``first`` to ``last``."""
    counts = {"links": 0, "events": 0, "rejected": 0, "runs": 0}
    if last < first:
        return counts
    query = (
        sa.select(chain_links.c.kind, sa.func.count(), sa.func.sum(chain_links.c["count"]))
        .where(chain_links.c.n.between(first, last))
        .group_by(chain_links.c.kind)
    )
    with engine.connect() as conn:
        for kind, links, rows in conn.execute(query):
            counts["links"] += int(links)
            counts[str(kind)] = int(rows or 0)
    return counts


def write_digest(
    engine: Engine, directory: Path, signing_key: Any = None, now: datetime | None = None
) -> Path:
    """Write the next digest file of ``directory``; returns its path."""
    now = now or datetime.now(timezone.utc)
    with _directory_lock(directory):
        previous = digest_files(directory)
        prev_doc: dict[str, Any] | None = None
        prev_ref: dict[str, str] | None = None
        if previous:
            data = previous[-1].read_bytes()
            prev_ref = {"file": previous[-1].name, "sha256": hashlib.sha256(data).hexdigest()}
            with contextlib.suppress(ValueError):
                prev_doc = json.loads(data)
        head = _read_head(engine)
        first = int(prev_doc["head"]["n"]) + 1 if prev_doc else 1
        document: dict[str, Any] = {
            "format": FORMAT,
            "created_at": timestamp(now),
            "tool_version": tool_version(),
            "head": {"n": head.n, "hash": head.hash, "created_at": head.created_at},
            "range": {"first_link": first, "last_link": head.n},
            "counts": _covered(engine, first, head.n),
            "previous": prev_ref,
        }
        if signing_key is not None:
            document["key_id"] = key_id(signing_key.public_key())
            signature = signing_key.sign(canonical_json(document))
            document["signature"] = base64.b64encode(signature).decode("ascii")
        stamp = now.strftime("%Y%m%dT%H%M%S%fZ")
        path = directory / f"{PREFIX}{stamp}-{head.n:012d}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(canonical_json(document) + b"\n")
        os.replace(tmp, path)
    return path


def check_directory(directory: Path) -> None:
    """Refuse a digest directory that does not exist or cannot be written, before any work."""
    if not directory.is_dir():
        raise DigestError(f"the digest directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DigestError(f"the digest directory {directory} is not writable")


class DigestWriter:
    """Writes digest files while a command runs (every :data:`INTERVAL`) and when it ends."""

    def __init__(
        self, engine: Engine, directory: Path, signing_key: Any = None, interval: float = INTERVAL
    ) -> None:
        self._engine = engine
        self._directory = directory
        self._key = signing_key
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="grantex-digests", daemon=True)

    def __enter__(self) -> DigestWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._write()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._write()

    def _write(self) -> None:
        try:
            path = write_digest(self._engine, self._directory, self._key)
            log.info("digest file written: %s", path)
        except (OSError, sa.exc.SQLAlchemyError) as exc:
            log.error("could not write a digest file in %s: %s", self._directory, exc)


# -- verifying -----------------------------------------------------------------


def check_digest_files(
    files: list[tuple[str, bytes]],
    link_hash: Any,
    public_key: Any = None,
    before: tuple[str, bytes] | None = None,
) -> Iterator[Problem]:
    """The digest files ``(name, bytes)`` oldest first against each other and the archive.

    ``link_hash(n)`` is the stored hash of link ``n`` (None when there is no such link).
    With ``public_key``, every file must carry a valid signature by that key. ``before``
    is the file just before the first given (a window's), which the first must name.
    """
    previous = before
    for name, data in files:
        try:
            document = json.loads(data)
            if not isinstance(document, dict) or document.get("format") != FORMAT:
                raise ValueError("not a digest file")
        except ValueError:
            yield Problem("digest", f"digest file {name} is not a digest file of this format")
            previous = (name, data)
            continue
        if data != canonical_json(document) + b"\n":
            yield Problem(
                "digest", f"digest file {name} was edited (it is not in its canonical form)"
            )
        yield from _check_previous(name, document, previous)
        if public_key is not None:
            yield from _check_signature(name, document, public_key)
        head = document.get("head") or {}
        n, expected = int(head.get("n", -1)), str(head.get("hash", ""))
        if n > 0:
            stored = link_hash(n)
            if stored is None:
                yield Problem(
                    "digest", f"digest file {name} names link {n}, which the archive does not have"
                )
            elif stored != expected:
                yield Problem(
                    "digest",
                    f"link {n} hashes to {stored[:16]}... in the archive, but digest file {name} "
                    f"recorded {expected[:16]}...: the chain was rewritten up to link {n}",
                )
        previous = (name, data)


def _check_previous(
    name: str, document: dict[str, Any], previous: tuple[str, bytes] | None
) -> Iterator[Problem]:
    named = document.get("previous")
    if previous is None:
        if named is not None:
            yield Problem(
                "digest",
                f"digest file {named.get('file')} is missing (digest file {name} names it)",
            )
        return
    before, data = previous
    if named is None:
        yield Problem(
            "digest", f"digest file {name} names no previous file, but {before} precedes it"
        )
    elif named.get("file") != before:
        yield Problem(
            "digest", f"digest file {named.get('file')} is missing (digest file {name} names it)"
        )
    elif named.get("sha256") != hashlib.sha256(data).hexdigest():
        yield Problem(
            "digest",
            f"digest file {before} was altered (digest file {name} recorded another SHA-256)",
        )


def _check_signature(name: str, document: dict[str, Any], public_key: Any) -> Iterator[Problem]:
    from cryptography.exceptions import InvalidSignature

    signature = document.get("signature")
    if not isinstance(signature, str):
        yield Problem("digest", f"digest file {name} is not signed")
        return
    unsigned = {k: v for k, v in document.items() if k != "signature"}
    try:
        public_key.verify(base64.b64decode(signature), canonical_json(unsigned))
    except (InvalidSignature, ValueError):
        yield Problem("digest", f"digest file {name} has a bad signature (not made by this key)")


def file_time(name: str) -> datetime | None:
    """When a digest file was written, from its name (None: not a digest file's name)."""
    stamp = name[len(PREFIX) :].split("-", 1)[0]
    try:
        return datetime.strptime(stamp, "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


@dataclass(frozen=True)
class Summary:
    """The digest files of a directory, for ``status``: how many, the newest, per day."""

    files: int
    newest: Path | None = None
    newest_at: datetime | None = None
    newest_link: int | None = None
    per_day: dict[date, int] = field(default_factory=dict)


def summarise(directory: Path) -> Summary:
    """Count the digest files per UTC day (by their names) and read the newest one's head."""
    paths = digest_files(directory)
    per_day: dict[date, int] = {}
    for path in paths:
        at = file_time(path.name)
        if at is not None:
            per_day[at.date()] = per_day.get(at.date(), 0) + 1
    if not paths:
        return Summary(0, per_day=per_day)
    newest = paths[-1]
    link = None
    try:
        document = json.loads(newest.read_bytes())
        link = int(document["head"]["n"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # verify-archive --digest-dir names what is wrong with it
    return Summary(len(paths), newest, file_time(newest.name), link, per_day)


def read_digest_files(directory: Path) -> list[tuple[str, bytes]]:
    return [(path.name, path.read_bytes()) for path in digest_files(directory)]
