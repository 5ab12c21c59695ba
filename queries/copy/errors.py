"""The errors the analytics copy raises."""

from __future__ import annotations

from pathlib import Path


class AnalyticsError(Exception):
    """The analytics copy could not be refreshed or read."""


class ArchiveUnavailable(AnalyticsError):
    """The archive's database could not be reached."""


class ArchiveMissing(AnalyticsError):
    """There is no archive at the SQLite path given."""

    def __init__(self, path: Path) -> None:
        super().__init__(
            f"no archive at {path}: create it with `grantex-archive ingest` "
            "(or an empty one with `grantex-archive db upgrade`)"
        )
        self.path = path


class ArchiveSchemaError(AnalyticsError):
    """The archive has no schema, or not the one this version reads."""


class NoCopyYet(AnalyticsError):
    """A copy was to be used as it is, but the archive has none yet."""
