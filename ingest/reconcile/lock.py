"""One reconcile per archive and source, held for the run, so that a run left ``running``
by a killed process can be told from one still going.

It is the ingest lock (:mod:`ingest.locks`: a lock file beside a SQLite
archive, an advisory lock on PostgreSQL) under a name no ``--source`` can
take (a command-line argument cannot hold a NUL), so a reconcile and an
ingest of the same source never wait for each other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from sqlalchemy.engine import Engine

from ..locks import LockHeld, ingest_lock


@contextmanager
def reconcile_lock(engine: Engine, source: str) -> Iterator[None]:
    """Hold the one-reconcile-per-archive-and-source lock, or raise ``LockHeld``."""
    with ExitStack() as held:
        try:
            held.enter_context(ingest_lock(engine, f"\0reconcile\0{source}"))
        except LockHeld:
            raise LockHeld(
                f"another reconcile is running for source {source!r} on this archive"
            ) from None
        yield
