"""The real CLI with the hash chain's sealing stubbed out, for the benchmarks only.

The "without sealing" side of the sealing-cost ratio in BENCHMARKS.md: the
same code, process and data as the sealed run, except that no link is
written. The product itself has no switch that turns sealing off.
"""

from __future__ import annotations

from typing import Any

import ingest.store
import ingest.store_runs
import ingest.worker
from ingest.cli import main
from ingest.reader import Preparation
from ingest.settings import IngestSettings
from ingest.store import Store


class NoSeal:
    """A :class:`~ingest.seal.chain.Sealer` that seals nothing."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def rows_above(self, kind: str, after: int) -> None:
        return None

    def events_bound(
        self,
        after: int,
        rows: Any,
        channel: str,
        inserted: int,
        digests: Any = None,
        first_key: Any = None,
    ) -> None:
        return None

    def events_returned(
        self, keyed: Any, rows: Any, channel: str, digests: Any = None, first_key: Any = None
    ) -> None:
        return None

    def rows_with_keys(self, kind: str, keys: Any) -> None:
        return None

    def close(self) -> None:
        return None


def rows_only(settings: IngestSettings, store: Store) -> Preparation | None:
    """The reader prepares SQLite rows but not the digests only the chain needs."""
    if not store.prepares_rows:
        return None
    return Preparation(settings.source, "stream", digests=False, target=store.dialect)


if __name__ == "__main__":
    ingest.worker.preparation_for = rows_only  # type: ignore[assignment]
    ingest.store.Sealer = NoSeal  # type: ignore[assignment,misc]
    ingest.store_runs.Sealer = NoSeal  # type: ignore[assignment,misc]
    main()
