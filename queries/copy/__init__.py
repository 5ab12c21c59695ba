"""The analytics copy: the archive as immutable Parquet files that DuckDB reads.

A copy lives in one directory::

    MANIFEST.json               what a reader should read (replaced atomically)
    events/seq-<lo>-<hi>-*.parquet   archive rows, immutable segments
    grants/base-*.parquet       one row of mergeable state per grant
    grants/delta-*.parquet      newer state for recently touched grants
    grants/facts-*.parquet      the revocation facts (``revocations``)
    tables/<table>-*.parquet    rejected_events, ingest_runs, ingest_connections, the
                                reconcile tables and chain_links (without digests),
                                re-read when changed
    trash/                      files a newer manifest no longer lists
    views.sql                   CREATE VIEW statements for the current manifest

Only the refresher writes, under an exclusive lock on ``.refresh.lock``.
Readers take no lock: they read the manifest, then the files it lists, which
are never modified; a file that a refresh retires moves to ``trash/`` and is
deleted some minutes later. A session reads the files through descriptors it
opened (``queries.session``), so it keeps its snapshot whatever a refresh does.

New archive rows are found by ``seq``. A trailing re-scan compares the ``seq``
values of the newest rows in the archive with those in the copy and fetches
any that are missing, so a row committed after rows with higher ``seq`` (two
PostgreSQL writers at once) still arrives. Deleting the directory loses
nothing: the next refresh rebuilds it.

The modules: ``analytics`` (the copy's directory and its lock), ``manifest``,
``columns`` (the copy's columns, from ``ingest.schema``), ``reader`` (the
archive through ADBC), ``transfer`` (archive rows into Parquet files),
``refresher`` (one refresh), ``trash`` (retired files), ``grant_state`` (the
grants table's SQL), ``views`` and ``sql`` (quoting), ``errors``.
"""

from __future__ import annotations

from .analytics import ENV_ANALYTICS_DIR, AnalyticsCopy, Opened, default_directory, open_copy
from .columns import DERIVED_COLUMNS, EVENT_COLUMNS, SEGMENT_COLUMNS, TABLE_COLUMNS
from .errors import (
    AnalyticsError,
    ArchiveMissing,
    ArchiveSchemaError,
    ArchiveUnavailable,
    NoCopyYet,
)
from .grant_state import GRANT_STATE_COLUMNS
from .manifest import MANIFEST, Locate, Manifest, Segment, read_manifest
from .reader import ArchiveReader, archive_read_engine, check_archive_exists
from .reader import libpq_uri as _libpq_uri
from .refresher import RefreshResult
from .transfer import ProgressFn
from .transfer import duck_projection as _duck_projection
from .transfer import typed_select as _typed_select
from .views import view_statements, views_sql

__all__ = [
    "DERIVED_COLUMNS",
    "ENV_ANALYTICS_DIR",
    "EVENT_COLUMNS",
    "GRANT_STATE_COLUMNS",
    "MANIFEST",
    "SEGMENT_COLUMNS",
    "TABLE_COLUMNS",
    "AnalyticsCopy",
    "AnalyticsError",
    "ArchiveMissing",
    "ArchiveReader",
    "ArchiveSchemaError",
    "ArchiveUnavailable",
    "Locate",
    "Manifest",
    "NoCopyYet",
    "Opened",
    "ProgressFn",
    "RefreshResult",
    "Segment",
    "_duck_projection",
    "_libpq_uri",
    "_typed_select",
    "archive_read_engine",
    "check_archive_exists",
    "default_directory",
    "open_copy",
    "read_manifest",
    "view_statements",
    "views_sql",
]
