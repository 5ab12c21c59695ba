"""Where an export goes: what PATH may be, and what ``--force`` may replace there.

``--force`` replaces only a previous export of the same shape: a file, or a
partitioned directory holding only the files its manifest lists, with its
manifest beside it. Never anything else, and never through a symbolic link.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from ingest import files

from .manifest import manifest_path, read_manifest
from .spec import ExportSpec, TargetError, VerifyError


def check_target(spec: ExportSpec) -> None:
    """Refuse a PATH this export may not write, or not replace (TargetError says why).

    PATH's directory must exist. PATH and its manifest must not be symbolic
    links. What is already there may be replaced, with ``--force``, only if it
    is a previous export of the same shape: a file (or, with --partition-by, a
    directory holding only the files its manifest lists) with a readable
    ``PATH.manifest.json`` beside it.
    """
    final = Path(spec.output)
    manifest = manifest_path(final)
    _check_directory(final.parent)
    for path in (final, manifest):
        if path.is_symlink():
            raise TargetError(
                f"{path} is a symbolic link; an export does not write through links: "
                "give the path it points to, or another PATH"
            )
    there = os.path.lexists(final)
    if not there and not os.path.lexists(manifest):
        return
    problem = _not_replaceable(final, manifest, spec)
    if problem is not None:
        raise TargetError(f"{problem}: remove it or choose another PATH")
    if not spec.force:
        raise TargetError(f"{final if there else manifest} exists (use --force to replace it)")


def remove_stale_temps(final: Path) -> list[Path]:
    """Remove what killed exports of ``final`` left beside it; the paths removed.

    Only temporary files and directories of this PATH (and of its manifest)
    that no process holds a lock on: a running export's are left alone.
    """
    return files.remove_stale_temps(final, manifest_path(final))


def _check_directory(parent: Path) -> None:
    try:
        if not stat.S_ISDIR(os.stat(parent).st_mode):
            raise TargetError(f"{parent} is not a directory: give PATH in a directory")
    except FileNotFoundError:
        raise TargetError(f"no directory {parent}: create it first") from None
    except NotADirectoryError:
        raise TargetError(f"{parent} is not a directory: give PATH in a directory") from None
    except OSError as exc:
        raise TargetError(f"cannot use {parent}: {exc.strerror}") from None


def _not_replaceable(final: Path, manifest: Path, spec: ExportSpec) -> str | None:
    """Why what is at ``final`` is not an export that ``spec`` may replace; None if it is."""
    shape = "a directory (--partition-by)" if spec.partition_by else "a file"
    if os.path.lexists(final):
        mode = os.lstat(final).st_mode
        if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            return f"{final} is not a regular file or directory"
        if stat.S_ISDIR(mode) != bool(spec.partition_by):
            kind = "a directory" if stat.S_ISDIR(mode) else "a file"
            return f"{final} is {kind}, and this export would be {shape}"
        if not os.path.lexists(manifest):
            return f"{final} exists and is not an export (no {manifest.name} beside it)"
    try:
        record = read_manifest(manifest)
    except VerifyError as exc:
        return f"{manifest} is not a readable export manifest ({exc})"
    export = record["export"]
    if export["path"] != final.name:
        return f"{manifest} describes {export['path']!r}, not {final.name!r}"
    if bool(export["partition_by"]) != bool(spec.partition_by):
        was = "a partitioned directory" if export["partition_by"] else "a file"
        return f"{final} was exported as {was}, and this export would be {shape}"
    if spec.partition_by and os.path.lexists(final):
        listed = {entry["path"] for entry in record["files"]}
        for name in tree_entries(final):
            if name not in listed:
                return f"{final} holds {name}, which its manifest does not list"
    return None


def tree_entries(root: Path) -> Iterator[str]:
    """Every file, link or other non-directory under ``root``, relative, in order.

    Links to directories are entries too: they are never followed.
    """
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        for name in sorted(names + [d for d in dirs if (here / d).is_symlink()]):
            yield (here / name).relative_to(root).as_posix()
        dirs[:] = sorted(d for d in dirs if not (here / d).is_symlink())
