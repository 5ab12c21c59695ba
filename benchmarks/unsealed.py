"""The real CLI with the hash chain's sealing stubbed out, for the benchmarks only.

The "without sealing" side of the sealing-cost ratio in BENCHMARKS.md: the
same code, process and data as the sealed run, except that no link is
written. The product itself has no switch that turns sealing off.
"""

from __future__ import annotations

from typing import Any

import ingest.store
import ingest.store_runs
from ingest.cli import main


class NoSeal:
    """A :class:`~ingest.seal.chain.Sealer` that seals nothing."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def rows_above(self, kind: str, after: int) -> None:
        return None

    def events_bound(self, after: int, rows: Any, channel: str) -> None:
        return None

    def rows_with_keys(self, kind: str, keys: Any) -> None:
        return None

    def close(self) -> None:
        return None


if __name__ == "__main__":
    ingest.store.Sealer = NoSeal  # type: ignore[assignment,misc]
    ingest.store_runs.Sealer = NoSeal  # type: ignore[assignment,misc]
    main()
