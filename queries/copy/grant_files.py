"""The copy's grant files: the grant state (base and delta) and the revocation facts.

The refresher writes them under its lock once the new segments are in place:
the state of the grants the new rows touch is merged into the delta file
(folded into the base when it outgrows DELTA_SHARE of it) and the new rows'
revocation facts are added to the facts file. Then what the facts say is
computed again from all of them and the state as written, and attached to
the delta rows of the grants they name (``revocations.routed_sql``). A full
build writes the base and the facts from every segment, then the same.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import duckdb

from ingest.database import first_line

from .errors import AnalyticsError
from .grant_state import (
    current_state_sql,
    grant_state_sql,
    merge_state_sql,
    routed_state_sql,
    unrouted_sql,
)
from .manifest import Manifest, Segment
from .revocations import current_facts_sql, facts_sql, merge_facts_sql, routed_sql
from .sql import events_from, parquet, sql_text
from .transfer import publish
from .trash import Trash

# The grants delta is folded into the base when it outgrows this share.
DELTA_SHARE = 0.25
DELTA_MIN_ROWS = 200_000


class GrantFiles:
    """Writes the grant files of the copy in ``directory`` through ``duck``."""

    def __init__(self, directory: Path, duck: duckdb.DuckDBPyConnection, trash: Trash) -> None:
        self.dir = directory
        self.duck = duck
        self.trash = trash

    def _exec(self, sql: str) -> list[tuple[Any, ...]]:
        return self.duck.execute(sql).fetchall()

    def build(self, manifest: Manifest) -> None:
        """The grant state and the revocation facts, from every segment."""
        events = events_from([self.dir / s.file for s in manifest.segments])
        name = self._write("base", grant_state_sql(events))
        self.trash.retire(*(f for f in (manifest.grants_base, manifest.grants_delta) if f))
        manifest.grants_base, manifest.grants_base_rows = name
        manifest.grants_delta, manifest.grants_delta_rows = None, 0
        self._replace_facts(manifest, self._write("facts", facts_sql(events)))
        self._write_delta(manifest, None)

    def update(self, manifest: Manifest, new: list[Segment]) -> None:
        """Merge the state of grants the new rows touch into the delta file, add their facts."""
        events = events_from([self.dir / s.file for s in new])
        facts = facts_sql(events)
        if self._exec(f"SELECT count(*) FROM ({facts})")[0][0]:
            merged_facts = merge_facts_sql(facts, current_facts_sql(self.dir.joinpath, manifest))
            self._replace_facts(manifest, self._write("facts", merged_facts))
        current = current_state_sql(self.dir.joinpath, manifest)
        merged = merge_state_sql(grant_state_sql(events), current)
        self._exec(f"CREATE OR REPLACE TEMP TABLE changed AS {merged}")
        try:
            self._write_delta(manifest, "SELECT * FROM changed")
        finally:
            self._exec("DROP TABLE changed")
        if manifest.grants_delta_rows > max(
            DELTA_MIN_ROWS, manifest.grants_base_rows * DELTA_SHARE
        ):
            assert manifest.grants_base is not None and manifest.grants_delta is not None
            state = unrouted_sql(current_state_sql(self.dir.joinpath, manifest))
            base, base_rows = self._write("base", state)
            self.trash.retire(manifest.grants_base, manifest.grants_delta)
            manifest.grants_base, manifest.grants_base_rows = base, base_rows
            manifest.grants_delta, manifest.grants_delta_rows = None, 0
            self._write_delta(manifest, None)

    def _write_delta(self, manifest: Manifest, changed: str | None) -> None:
        """Write the delta: ``changed`` (merged state), the old delta's other rows and the
        base rows of the grants the facts name, with what all the facts say attached.

        What the facts say is attached afresh to every delta row (NULL for a
        grant they no longer route anything to); the base never holds any of it.
        """
        locate = self.dir.joinpath
        assert manifest.grants_base is not None
        base = parquet(locate(manifest.grants_base))
        held = [changed] if changed else []
        if manifest.grants_delta:
            held.append(f"SELECT * FROM {parquet(locate(manifest.grants_delta))}")
        # Minimums over every row of a grant are its state's: enough for routed_sql.
        rows = " UNION ALL ".join([f"SELECT * FROM {base}", *held])
        routed = routed_sql(current_facts_sql(locate, manifest), rows)
        self._exec(f"CREATE OR REPLACE TEMP TABLE routed AS {routed}")
        try:
            parts, before = [], ""
            for part in [*held, f"SELECT b.* FROM {base} b SEMI JOIN routed USING (grant_id)"]:
                parts.append(f"SELECT * FROM ({part}) p{before}")
                before += f" ANTI JOIN ({part}) p{len(parts)} USING (grant_id)"
            sql = routed_state_sql(" UNION ALL ".join(parts), "SELECT * FROM routed")
            name, count = self._write("delta", sql)
        finally:
            self._exec("DROP TABLE routed")
        if manifest.grants_delta:
            self.trash.retire(manifest.grants_delta)
        manifest.grants_delta, manifest.grants_delta_rows = (name, count) if count else (None, 0)
        if not count:
            self.trash.retire(name)

    def _replace_facts(self, manifest: Manifest, written: tuple[str, int]) -> None:
        """Name a new facts file in the manifest, retiring the one it replaces."""
        if manifest.facts:
            self.trash.retire(manifest.facts)
        manifest.facts, manifest.facts_rows = written

    def _write(self, kind: str, sql: str) -> tuple[str, int]:
        name = f"grants/{kind}-{secrets.token_hex(8)}.parquet"
        tmp = self.dir / f"{name}.tmp"
        try:
            self._exec(f"COPY ({sql}) TO '{sql_text(str(tmp))}' (FORMAT parquet, COMPRESSION zstd)")
        except duckdb.Error as exc:
            tmp.unlink(missing_ok=True)
            raise AnalyticsError(f"building the grants table failed: {first_line(exc)}") from None
        rows = self._exec(f"SELECT count(*) FROM {parquet(tmp)}")
        publish(tmp, self.dir / name)
        return name, int(rows[0][0])
