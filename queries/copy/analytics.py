"""One archive's analytics copy: where it lives, and refreshing it under the lock.

Only one process refreshes a copy at a time, under an exclusive lock on
``.refresh.lock`` in its directory (``ingest.files.file_lock``). A process
that finds the lock held past its wait reads the copy as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from ingest.files import LockBusy, file_lock
from ingest.store import sqlite_path

from .errors import AnalyticsError, NoCopyYet
from .manifest import Manifest, read_manifest
from .reader import check_archive_exists
from .refresher import Refresher, RefreshResult
from .transfer import ProgressFn

ENV_ANALYTICS_DIR = "GRANTEX_ARCHIVE_ANALYTICS_DIR"
LOCK_FILE = ".refresh.lock"


def default_directory(db_url: str) -> Path:
    """Where a copy lives unless told: beside a SQLite file, else a user cache."""
    path = sqlite_path(db_url)
    if path is not None:
        return path.with_name(path.name + ".analytics")
    parsed = sa.engine.make_url(db_url)
    # The password is not part of the archive's identity, and must not end up in a path.
    identity = parsed._replace(password=None).render_as_string(hide_password=False)
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "grantex-archive" / f"{parsed.database or 'archive'}-{digest}"


class AnalyticsCopy:
    """One archive's analytics copy in ``directory``."""

    def __init__(self, db_url: str, directory: Path | None = None) -> None:
        self.db_url = db_url
        self.directory = Path(directory) if directory else default_directory(db_url)
        url = sa.engine.make_url(db_url)
        self.identity = url._replace(password=None).render_as_string(hide_password=False)
        path = sqlite_path(db_url)
        if path is not None:
            self.identity = f"sqlite:///{path.resolve()}"

    # -- reading

    def manifest(self) -> Manifest | None:
        return read_manifest(self.directory)

    def size_bytes(self) -> int:
        manifest = self.manifest()
        if manifest is None:
            return 0
        total = 0
        for name in manifest.files():
            with contextlib.suppress(FileNotFoundError):
                total += (self.directory / name).stat().st_size
        return total

    # -- refreshing

    def refresh(
        self,
        full: bool = False,
        wait: float = 120.0,
        progress: ProgressFn | None = None,
    ) -> RefreshResult:
        """Bring the copy up to the archive; another refresher's work is waited for.

        When the lock is still held after ``wait`` seconds, the copy is used as it
        is (``waited`` set): readers never fail because somebody else refreshes.
        """
        started = time.monotonic()
        # Before anything is created: a mistyped path must leave nothing behind.
        check_archive_exists(self.db_url)
        try:
            return self._refresh(full, wait, progress, started)
        except OSError as exc:
            raise AnalyticsError(
                f"cannot write the analytics copy in {self.directory}: "
                f"{exc.strerror or exc} (choose another place with --analytics-dir)"
            ) from None

    def _refresh(
        self, full: bool, wait: float, progress: ProgressFn | None, started: float
    ) -> RefreshResult:
        self.directory.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(file_lock(self.directory / LOCK_FILE, wait=wait))
            except LockBusy:
                return self._as_it_is(started)
            refresher = Refresher(self.db_url, self.directory, self.identity, progress)
            try:
                return refresher.run(full, started)
            finally:
                refresher.close()

    def _as_it_is(self, started: float) -> RefreshResult:
        """The copy as another refresher left it, for a caller that waited in vain."""
        manifest = self.manifest()
        if manifest is None:
            raise AnalyticsError(
                f"another process is building the analytics copy in {self.directory}; "
                "try again when it has finished"
            )
        return RefreshResult(False, 0, 0, time.monotonic() - started, manifest, True)


@dataclass(frozen=True)
class Opened:
    """An analytics copy ready to query, and what refreshing it did (None: not refreshed)."""

    copy: AnalyticsCopy
    refreshed: RefreshResult | None


def open_copy(
    db_url: str,
    analytics_dir: Path | None = None,
    refresh: bool = True,
    full: bool = False,
    progress: ProgressFn | None = None,
) -> Opened:
    """The analytics copy of the archive at ``db_url``, refreshed first unless ``refresh=False``.

    Raises :class:`ArchiveMissing` for a SQLite file that does not exist and
    :class:`NoCopyYet` when ``refresh=False`` finds no copy.
    """
    check_archive_exists(db_url)
    copy = AnalyticsCopy(db_url, analytics_dir)
    if refresh:
        return Opened(copy, copy.refresh(full=full, progress=progress))
    if copy.manifest() is None:
        raise NoCopyYet(f"no analytics copy in {copy.directory} yet")
    return Opened(copy, None)
