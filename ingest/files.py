"""Files that must survive crashes and be shared between processes.

Durable writes (write under a temporary name, sync, rename, sync the
directory) and advisory locks (``flock``), used by the ingest lock, the
analytics refresher, the run journal, the exports and ``-o FILE``.

A temporary file is named ``.NAME.<8 hex>.tmp`` beside the ``NAME`` it will
replace and is held under an ``flock`` for as long as its writer has it open,
so :func:`remove_stale_temps` can tell what a killed writer left (nobody
holds it) from what a running one is writing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

# What a temporary name adds to NAME: ".NAME.<8 hex>.tmp" (being written) or
# ".NAME.<8 hex>.old" (a replaced directory being removed).
_TEMP_TAIL = re.compile(r"[0-9a-f]{8}\.(?:tmp|old)")


def temp_name(final: Path, kind: str = "tmp") -> Path:
    """A new hidden name beside ``final``: ``.NAME.<8 hex>.tmp`` (or ``.old``)."""
    return final.with_name(f".{final.name}.{secrets.token_hex(4)}.{kind}")


def locked_temp(final: Path, directory: bool = False, mode: int = 0o666) -> tuple[Path, int]:
    """A new temporary file (or directory) beside ``final``, and a descriptor holding its lock.

    The file is opened for writing (a directory for reading). The lock
    (``flock``) lasts as long as the descriptor is open, so a process that
    dies, however it dies, leaves a temporary file nobody holds:
    :func:`remove_stale_temps` tells those from the files of running writers.
    The caller closes the descriptor.
    """
    while True:
        tmp = temp_name(final)
        if directory:
            os.mkdir(tmp)
            fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Another writer's cleaning may have taken the new, not yet locked,
        # file for a stale one and removed it in that instant: then try again.
        if same_file(tmp, fd):
            return tmp, fd
        os.close(fd)


def same_file(path: Path, fd: int) -> bool:
    """Whether ``path`` (not followed if a link) is the file open as ``fd``."""
    try:
        there = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)


def remove_stale_temps(*finals: Path) -> list[Path]:
    """Remove what killed writers of ``finals`` left beside them; the paths removed.

    Only temporary files and directories of these names (``.NAME.<8 hex>.tmp``
    or ``.old``) that no process holds a lock on: a running writer's are
    left alone, and so is anything else, however similar its name.
    """
    removed: list[Path] = []
    for final in finals:
        prefix = f".{final.name}."
        try:
            names = sorted(entry.name for entry in os.scandir(final.parent))
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix) and _TEMP_TAIL.fullmatch(name[len(prefix) :]):
                path = final.with_name(name)
                if _remove_unheld(path):
                    removed.append(path)
    return removed


def _remove_unheld(path: Path) -> bool:
    """Remove the file or directory at ``path`` if nobody holds a lock on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone meanwhile, or a symbolic link: not ours to remove
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: a writer is writing it
            return False
        if not same_file(path, fd):
            return False
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            shutil.rmtree(path, ignore_errors=True)
        elif stat.S_ISREG(mode):
            path.unlink(missing_ok=True)
        else:
            return False
        return True
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one.

    The data and then the directory entry are synced to disk: after a power
    loss the file is whole or absent, never empty.
    """
    _atomic_write(path, data, 0o644)


def atomic_write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8, the new file created with ``mode``."""
    _atomic_write(path, text.encode("utf-8"), mode)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    tmp, fd = locked_temp(path, mode=mode)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
            replace(tmp, path)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def sync_file(path: Path) -> None:
    """Flush what was written to ``path`` (a file, or a directory's entries) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """Sync every file and directory under ``root``, and ``root``, deepest first."""
    for folder, _dirs, names in os.walk(root, topdown=False):
        for name in names:
            if not os.path.islink(os.path.join(folder, name)):
                sync_file(Path(folder, name))
        sync_file(Path(folder))


def replace(tmp: Path, final: Path) -> None:
    """Put ``tmp`` (its data already synced) in place of ``final``, durably.

    A file replaces in one rename. A directory replacing a directory: the
    old one is first renamed aside (``.NAME.<8 hex>.old``) and removed once
    ``tmp`` is in its place. The renames are synced to disk before returning.
    """
    if tmp.is_dir() and final.is_dir() and not final.is_symlink():
        old = temp_name(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        sync_directory(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
        sync_directory(final.parent)


def sync_directory(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


class LockBusy(Exception):
    """Another process holds the lock."""


@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    wait: float = 0.0,
    note_pid: bool = False,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Tries for up to ``wait`` seconds, then raises :class:`LockBusy`. The lock
    goes with the process, however it ends; ``note_pid`` writes the holder's
    pid into the file for whoever looks. ``OSError`` from creating the file
    is the caller's to explain.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = clock() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if clock() >= deadline:
                    raise LockBusy(str(path)) from None
                sleep(0.05)
        try:
            if note_pid:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
