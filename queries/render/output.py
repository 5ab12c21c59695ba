"""Writing a result where the output options say: standard output, or FILE written durably.

FILE is written under a locked temporary name beside it
(``ingest.files.locked_temp``), synced, and renamed into place when
complete: an interrupted command leaves FILE as it was.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ingest import files

from .options import OutputError, layout_for, output_format, to_stdout
from .writers import write_rows


@contextmanager
def open_output(output: str | None) -> Iterator[IO[str]]:
    """Standard output, or FILE written under a temporary name and renamed when done."""
    if to_stdout(output):
        yield sys.stdout
        return
    path = Path(str(output))
    files.remove_stale_temps(path)  # what a killed run left
    try:
        tmp, fd = files.locked_temp(path)
    except OSError as exc:  # the directory went away, or may not be written
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        try:
            with open(fd, "w", encoding="utf-8", newline="", closefd=False) as handle:
                yield handle
                handle.flush()
                os.fsync(fd)
        except OSError as exc:  # the directory went away, the disk is full
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
        _put_in_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        os.close(fd)


def replace_output(staged: Path, final: Path) -> None:
    """Put a finished file in place of FILE, durably; OutputError if the file system refuses."""
    try:
        files.sync_file(staged)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
    _put_in_place(staged, final)


def _put_in_place(staged: Path, final: Path) -> None:
    try:
        files.replace(staged, final)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc


def render(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    fmt: str | None,
    output: str | None,
    json_fields: Mapping[str, Any] | None = None,
) -> int:
    """Write a result where the output options say; returns the row count.

    ``json_fields`` are added to every JSON and JSON Lines record.
    """
    chosen = output_format(fmt, output)
    with open_output(output) as out:
        return write_rows(out, chosen, columns, rows, layout_for(output), json_fields)
