"""Retiring the copy's files: what a newer manifest no longer names.

A retired file moves to ``trash/`` (never deleted at once: a reader may hold
an older manifest that names it) and is deleted once TRASH_SECONDS have
passed. Everything here runs under the refresher lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path

from .manifest import Manifest

log = logging.getLogger(__name__)

# Retired files stay readable this long for readers that hold an older manifest.
TRASH_SECONDS = 600.0

# The subdirectories whose files a manifest names.
DATA_DIRECTORIES = ("events", "grants", "tables")


class Trash:
    """The files a refresh retires, moved to ``trash/`` once its manifest is written."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.retired: list[str] = []

    def retire(self, *names: str) -> None:
        """Retire files of the copy, by the names a manifest gives them."""
        self.retired.extend(names)

    def retire_all(self) -> None:
        for sub in DATA_DIRECTORIES:
            for path in (self.dir / sub).iterdir():
                self.retired.append(f"{sub}/{path.name}")

    def retire_orphans(self, manifest: Manifest) -> None:
        """Retire the files no manifest names: what a killed refresher left.

        Under the lock no refresher is writing, so such a file is a finished
        segment or state of a refresh killed before its manifest, or one a
        refresh killed after its manifest had not yet moved to trash/ (a
        reader may still hold the older manifest: hence trash, not deletion).
        """
        named = set(manifest.files())
        for sub in DATA_DIRECTORIES:
            for path in (self.dir / sub).iterdir():
                name = f"{sub}/{path.name}"
                if name not in named:
                    log.info("retiring %s, left by an interrupted refresh", name)
                    self.retired.append(name)

    def move_retired(self) -> None:
        """Move the retired files to trash/ (the new manifest is written)."""
        stamp = int(time.time())
        for name in self.retired:
            source = self.dir / name
            with contextlib.suppress(FileNotFoundError):
                os.replace(source, self.dir / "trash" / f"{stamp}-{source.name}")
        self.retired = []

    def empty(self) -> None:
        """Delete what has been in trash/ for TRASH_SECONDS."""
        cutoff = time.time() - TRASH_SECONDS
        for path in (self.dir / "trash").iterdir():
            try:
                stamp = int(path.name.split("-", 1)[0])
            except ValueError:
                stamp = 0
            if stamp < cutoff:
                path.unlink(missing_ok=True)
